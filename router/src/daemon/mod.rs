//! The `hyphae-router` daemon: threads, peer links, forwarding and the admin API around the
//! sans-IO [`hyphae_proto::babel::Router`].
//!
//! ```text
//!             +-------------------- control thread --------------------+
//!             | babel::Router, peer manager, FibWriter (publishes)     |
//!             +------^---------------------------|---------------------+
//!     TLVs, peer up/down, admin requests         | control frames (per-peer queue)
//!             |                                  v
//!  worker 0 .. worker N-1: one runtime each (tokio-uring, or tokio current-thread)
//!     TCP listener (SO_REUSEPORT) + dialed peers; worker 0 also owns the QUIC endpoint
//!     read -> Deframer -> data frame: FIB lookup (lock-free snapshot), hop limit rewritten in
//!     place, the same bytes queued on the egress peer's bounded queue -> vectored write
//! ```
//!
//! The admin API and metrics run on their own thread and only ever message the control thread
//! and the workers; they never touch a socket of the data plane.

pub mod config;
pub mod endpoint;

mod api;
mod control;
mod discovery;
mod forward;
mod icmp;
mod link;
mod local;
mod messages;
mod quic;
mod sockopt;
mod worker;

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyphae_wire::identity::{PublicKey, SecretKey};
use hyphae_wire::{RouterId, Subnet};
use tokio::sync::{mpsc, watch};

use config::Settings;
use endpoint::Endpoint;
use hyphae_proto::PeerId;
use hyphae_proto::fib::FibReader;

pub(crate) use control::ControlMsg;

/// Bytes a peer's egress queue holds before new frames are dropped (and counted): about a
/// millisecond at the rates one core forwards, so a saturated link adds bounded delay.
pub(crate) const PEER_QUEUE_BYTES: usize = 512 * 1024;
/// Control messages the control thread's inbox holds before TLVs are dropped (and counted).
pub(crate) const CONTROL_QUEUE: usize = 65_536;

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
    fn as_str(self) -> &'static str {
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
    /// Runs of whole data frames to send, with their frame counts; bounded in bytes by
    /// [`PeerHandle::enqueue`].
    pub(crate) data_tx: mpsc::UnboundedSender<(Bytes, u32)>,
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
        if self.data_tx.send((run, frames)).is_err() {
            self.queued.fetch_sub(len, Relaxed);
            return false;
        }
        true
    }

    /// The reference's description of a link, used as `nextHop` in route listings.
    pub(crate) fn describe(&self) -> String {
        let proto = match self.endpoint.proto {
            endpoint::Proto::Tcp => "TCP",
            endpoint::Proto::Quic => "QUIC",
        };
        format!("{proto} {} <-> {}", self.local, self.endpoint.addr)
    }
}

/// Drop reasons counted by the data plane.
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
    /// Control TLVs dropped because the control thread's inbox was full.
    pub(crate) drop_control_queue: AtomicU64,
    /// Data frames too large for a QUIC datagram, sent on the stream instead.
    pub(crate) quic_oversize_on_stream: AtomicU64,
    /// Out-of-band ICMP errors sent back to sources.
    pub(crate) icmp_sent: AtomicU64,
}

/// State every thread shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// This node.
    pub(crate) node: Node,
    /// The forwarding table.
    pub(crate) fib: FibReader,
    /// Live peer links.
    pub(crate) peers: ArcSwap<HashMap<PeerId, Arc<PeerHandle>>>,
    /// Public keys of the sources of selected routes (to open frames for this node).
    pub(crate) keys: ArcSwap<HashMap<Subnet, PublicKey>>,
    /// The control thread's inbox.
    pub(crate) ctl: mpsc::Sender<ControlMsg>,
    /// The message task's inbox (it runs on worker 0).
    pub(crate) msg: mpsc::Sender<messages::MsgCmd>,
    /// One set of counters per worker.
    pub(crate) counters: Vec<WorkerCounters>,
    /// Commands to each worker.
    pub(crate) workers: Vec<mpsc::UnboundedSender<worker::WorkerCmd>>,
    /// Becomes true at shutdown.
    pub(crate) shutdown: watch::Receiver<bool>,
    next_peer: AtomicU64,
    /// The settings.
    pub(crate) settings: Settings,
}

impl Shared {
    fn next_peer_id(&self) -> PeerId {
        PeerId(self.next_peer.fetch_add(1, Relaxed))
    }

    fn add_peer(&self, h: Arc<PeerHandle>) {
        self.peers.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(h.id, h.clone());
            m
        });
    }

    fn remove_peer(&self, id: PeerId) {
        self.peers.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(&id);
            m
        });
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad key file.
    #[error(transparent)]
    Key(#[from] hyphae_wire::identity::key_file::KeyFileError),
    /// A socket could not be bound.
    #[error("{what} {addr}: {source}")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Runs the node until SIGTERM or SIGINT.
pub fn run(settings: Settings) -> Result<(), StartError> {
    let node = start(settings)?;
    wait_for_signal();
    tracing::info!("shutting down");
    node.shutdown();
    Ok(())
}

/// A running node, started in this process by [`start`] (for tests, benchmarks and embedding).
#[derive(Debug)]
pub struct Running {
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.shared.node.public
    }

    /// Stops every thread (waiting up to 5 s).
    pub fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        for w in &self.shared.workers {
            let _ = w.send(worker::WorkerCmd::Shutdown);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for t in self.threads {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Starts the node's threads and returns once its sockets are bound.
pub fn start(settings: Settings) -> Result<Running, StartError> {
    let secret = hyphae_wire::identity::key_file::load_or_create(&settings.key_file)?;
    let public = secret.public_key();
    let rnd = hyphae_wire::seal::random_nonce()
        .map_err(|e| StartError::Other(format!("no randomness: {e}")))?;
    let router_id = RouterId::new(&public, 0, [rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]]);
    let hash_seed = u64::from_le_bytes([
        rnd[4], rnd[5], rnd[6], rnd[7], rnd[8], rnd[9], rnd[10], rnd[11],
    ]);
    let node = Node {
        address: public.address(),
        subnet: public.subnet(),
        secret,
        public,
        router_id,
        start_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    tracing::info!(address = %node.address, subnet = %node.subnet, pubkey = %node.public, "node identity");

    let driver = worker::pick_driver(settings.driver)?;
    let listeners =
        worker::bind_tcp_listeners(settings.tcp_port, settings.workers, settings.tcp_rcvbuf)?;
    let quic_socket = match settings.quic_port {
        Some(p) => Some(quic::bind_socket(p)?),
        None => None,
    };
    let api_listener = api::bind(settings.api_addr, "admin API")?;
    let metrics_listener = match settings.metrics_addr {
        Some(a) => Some(api::bind(a, "metrics API")?),
        None => None,
    };
    let local_listener = match &settings.local_socket {
        Some(p) => Some(local::bind(p, settings.local_socket_mode)?),
        None => None,
    };

    let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
    let (msg_tx, msg_rx) = mpsc::channel(CONTROL_QUEUE);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut worker_txs = Vec::new();
    let mut worker_rxs = Vec::new();
    for _ in 0..settings.workers {
        let (t, r) = mpsc::unbounded_channel();
        worker_txs.push(t);
        worker_rxs.push(r);
    }
    let mut fib_writer = hyphae_proto::fib::FibWriter::new(hash_seed);
    let fib = fib_writer.reader();
    let shared = Arc::new(Shared {
        node,
        fib,
        peers: ArcSwap::default(),
        keys: ArcSwap::default(),
        ctl: ctl_tx,
        msg: msg_tx,
        counters: (0..settings.workers)
            .map(|_| WorkerCounters::default())
            .collect(),
        workers: worker_txs,
        shutdown: shutdown_rx,
        next_peer: AtomicU64::new(1),
        settings: settings.clone(),
    });
    fib_writer.publish();

    let mut threads = Vec::new();
    let s = shared.clone();
    threads.push(spawn("hyphae-control", move || {
        control::run(s, ctl_rx, fib_writer, hash_seed)
    })?);
    let mut quic_socket = quic_socket;
    // Worker 0 also runs the message subsystem and serves the local socket.
    let mut messages = Some((msg_rx, local_listener));
    for (i, (listener, cmd_rx)) in listeners.into_iter().zip(worker_rxs).enumerate() {
        let s = shared.clone();
        let q = if i == 0 { quic_socket.take() } else { None };
        let m = if i == 0 { messages.take() } else { None };
        threads.push(spawn(&format!("hyphae-w{i}"), move || {
            worker::run(i, s, driver, listener, q, m, cmd_rx)
        })?);
    }
    let s = shared.clone();
    threads.push(spawn("hyphae-api", move || {
        api::run(s, api_listener, metrics_listener)
    })?);
    tracing::info!(workers = settings.workers, driver = ?driver, tcp = settings.tcp_port,
        quic = ?settings.quic_port, api = %settings.api_addr, "hyphae-router running");

    Ok(Running {
        shared,
        shutdown_tx,
        threads,
    })
}

fn spawn<F: FnOnce() + Send + 'static>(
    name: &str,
    f: F,
) -> Result<std::thread::JoinHandle<()>, StartError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| StartError::Other(format!("spawning thread {name}: {e}")))
}

fn wait_for_signal() {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("signal runtime: {e}");
            return;
        }
    };
    rt.block_on(async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("SIGTERM handler: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    });
}

/// Sleeps until `deadline`, or forever if there is none: the next timer of a sans-IO state
/// machine, in a `select!` beside its inbox.
pub(crate) async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
