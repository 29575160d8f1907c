//! The data-plane workers: one thread each, with a single-threaded tokio runtime (and, with
//! the io_uring driver, the worker's `ring` inside it) that owns its peer links, reads and forwards their frames and writes
//! their queues. This module alone builds the runtimes and decides which worker runs what:
//! TCP and QUIC links are spread over the workers (each has its own TCP listener and QUIC
//! endpoints on the shared ports), and the [`HOME`] worker also runs the message task, the
//! local socket and link-local discovery.

use std::net::UdpSocket;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::spawn_local;

use super::config::DriverChoice;
use super::endpoint::{Endpoint, Proto};
use super::error::StartError;
use super::forward::{Forwarder, PacketStats};
use super::inbox::{ControlMsg, MsgCmd};
use super::link::Driver;
use super::peers::PeerType;
use super::quic::Quic;
use super::ring::Ring;
use super::shared::Shared;
use super::tcp::Tcp;
use super::tun::TunQueue;
use super::{calibrate, discovery, local_socket, message_task};

/// The worker that runs the node's single tasks beside its share of the links: the message
/// task (so a message packet from one of its links, or a request on the local socket, reaches
/// the state machine without a thread hop), the local socket and link-local discovery.
pub(crate) const HOME: usize = 0;

/// Commands a worker's queue holds (dials and packet-count requests; both are retried or
/// answered "busy" when it is full).
const WORKER_QUEUE: usize = 256;

/// How long the API waits for a worker's packet counts.
const STATS_TIMEOUT: Duration = Duration::from_secs(3);

/// A command to a worker.
#[derive(Debug)]
enum WorkerCmd {
    /// Connect to a peer.
    Dial(Endpoint, PeerType),
    /// Report packet counts by source and destination.
    PacketStats(oneshot::Sender<PacketStats>),
    /// Stop.
    Shutdown,
}

/// The workers' command queues, and the rule that places new links on them.
#[derive(Debug, Clone)]
pub(crate) struct Workers {
    queues: Arc<[mpsc::Sender<WorkerCmd>]>,
    next: Arc<AtomicUsize>,
}

impl Workers {
    /// Dials `ep` from the worker that will run the link: each worker in turn, TCP and QUIC
    /// alike (links peers open are spread by the kernel, over the workers' listeners). False if
    /// the worker's queue was full and nothing was dialed.
    pub(crate) fn dial(&self, ep: Endpoint, kind: PeerType) -> bool {
        let w = (self.next.fetch_add(1, Relaxed) + 1) % self.queues.len();
        // A full queue means the worker is far behind: the dial is dropped and the peer
        // manager dials again after its interval.
        let queued = self.queues[w].try_send(WorkerCmd::Dial(ep, kind)).is_ok();
        if !queued {
            tracing::warn!(worker = w, %ep, "worker queue full: dial postponed");
        }
        queued
    }

    /// Every worker's packet counts (those that answer in time).
    pub(crate) async fn packet_stats(&self) -> Vec<PacketStats> {
        let mut out = Vec::new();
        for q in self.queues.iter() {
            let (tx, rx) = oneshot::channel();
            if q.try_send(WorkerCmd::PacketStats(tx)).is_ok()
                && let Ok(Ok(v)) = tokio::time::timeout(STATS_TIMEOUT, rx).await
            {
                out.push(v);
            }
        }
        out
    }

    /// Tells every worker to stop.
    pub(crate) fn shutdown(&self) {
        // Workers also stop on the shutdown signal; this only wakes them sooner.
        for q in self.queues.iter() {
            let _ = q.try_send(WorkerCmd::Shutdown);
        }
    }
}

/// The sockets and inbox of the tasks the [`HOME`] worker runs besides its links.
#[derive(Debug)]
pub(crate) struct HomeTasks {
    /// The message task's inbox.
    pub(crate) messages: mpsc::Receiver<MsgCmd>,
    /// The local socket, if configured.
    pub(crate) local_socket: Option<UnixListener>,
}

/// The sockets one worker listens on.
#[derive(Debug)]
pub(crate) struct Listeners {
    /// Its TCP listener.
    pub(crate) tcp: std::net::TcpListener,
    /// Its QUIC socket, if QUIC is on.
    pub(crate) quic: Option<UdpSocket>,
    /// Its queue of the TUN device, if the node has one.
    pub(crate) tun: Option<OwnedFd>,
}

/// Starts one worker thread per entry of `listeners` (worker `i` listens on `listeners[i]`).
pub(crate) fn spawn_all(
    shared: &Arc<Shared>,
    driver: Driver,
    listeners: Vec<Listeners>,
    home: HomeTasks,
) -> Result<(Workers, Vec<std::thread::JoinHandle<()>>), StartError> {
    let (queues, inboxes): (Vec<_>, Vec<_>) = listeners
        .iter()
        .map(|_| mpsc::channel(WORKER_QUEUE))
        .unzip();
    let workers = Workers {
        queues: queues.into(),
        next: Arc::default(),
    };
    let mut home = Some(home);
    let mut threads = Vec::new();
    for (i, (listener, cmds)) in listeners.into_iter().zip(inboxes).enumerate() {
        let s = shared.clone();
        let h = if i == HOME { home.take() } else { None };
        threads.push(spawn_thread(&format!("hyphae-w{i}"), move || {
            run(i, s, driver, listener, h, cmds)
        })?);
    }
    Ok((workers, threads))
}

/// Starts a named thread.
pub(crate) fn spawn_thread<F: FnOnce() + Send + 'static>(
    name: &str,
    f: F,
) -> Result<std::thread::JoinHandle<()>, StartError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| StartError::Other(format!("spawning thread {name}: {e}")))
}

/// Decides the driver once, at start. `auto` measures both on this host ([`calibrate`]) and
/// takes io_uring only where it was clearly faster, the portable driver otherwise and where
/// io_uring is unavailable; `uring` runs the workers' links on io_uring or fails.
pub(crate) fn pick_driver(choice: DriverChoice) -> Result<Driver, StartError> {
    match choice {
        DriverChoice::Portable => Ok(Driver::Portable),
        DriverChoice::Uring => match super::ring::available() {
            Ok(()) => Ok(Driver::Uring),
            Err(e) => Err(StartError::Other(format!("io_uring unavailable: {e}"))),
        },
        DriverChoice::Auto => Ok(auto_driver()),
    }
}

/// `--driver auto`: see [`calibrate`]; every outcome is logged once.
fn auto_driver() -> Driver {
    if let Err(e) = super::ring::available() {
        tracing::info!("driver auto: portable (io_uring unavailable: {e})");
        return Driver::Portable;
    }
    let start = std::time::Instant::now();
    match calibrate::measure() {
        Ok(turns) => {
            let v = calibrate::verdict(&turns);
            let (lo, hi) = v.ratios.unwrap_or((f64::NAN, f64::NAN));
            tracing::info!(
                "driver auto: {}: io_uring took {lo:.2}..{hi:.2} of the portable driver's time \
                 in {} turns (it needs at most {:.2} in every turn; measured in {} ms)",
                match v.driver {
                    Driver::Uring => "uring",
                    Driver::Portable => "portable",
                },
                turns.len(),
                1.0 - calibrate::MARGIN,
                start.elapsed().as_millis(),
            );
            v.driver
        }
        Err(e) => {
            tracing::warn!("driver auto: portable (measuring the drivers failed: {e})");
            Driver::Portable
        }
    }
}

/// The worker thread's body: builds its runtime (tokio, current thread; the io_uring driver
/// adds its ring to it in [`worker_main`]) and runs it until shutdown.
fn run(
    idx: usize,
    shared: Arc<Shared>,
    driver: Driver,
    listeners: Listeners,
    home: Option<HomeTasks>,
    cmds: mpsc::Receiver<WorkerCmd>,
) {
    super::peers::set_current_worker(idx);
    let fut = worker_main(idx, shared, driver, listeners, home, cmds);
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => tokio::task::LocalSet::new().block_on(&rt, fut),
        Err(e) => tracing::error!(worker = idx, "runtime: {e}"),
    }
}

async fn worker_main(
    idx: usize,
    shared: Arc<Shared>,
    driver: Driver,
    listeners: Listeners,
    home: Option<HomeTasks>,
    mut cmds: mpsc::Receiver<WorkerCmd>,
) {
    // The packet-count tables are keyed by addresses peers choose: their hash is keyed by the
    // node's random seed, different on every worker.
    let seed = shared.node.hash_seed ^ (idx as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let tun = match listeners.tun.map(TunQueue::new).transpose() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(worker = idx, "TUN queue: {e}");
            return;
        }
    };
    let ring = match driver {
        Driver::Uring => match Ring::new() {
            Ok(ring) => {
                tracing::debug!(worker = idx, "io_uring ring: {}", ring.setup());
                spawn_local(ring.clone().drive());
                Some(ring)
            }
            Err(e) => {
                // The worker must not go: its listener, TUN queue and share of the links
                // would go with it. The ring's I/O has the portable driver's behaviour.
                tracing::warn!(
                    worker = idx,
                    "io_uring ring: {e}; this worker runs the portable driver"
                );
                None
            }
        },
        Driver::Portable => None,
    };
    let fwd = Forwarder::new(idx, shared.clone(), seed, tun, ring);
    let tcp = Tcp { fwd: fwd.clone() };
    match tokio::net::TcpListener::from_std(listeners.tcp) {
        Ok(l) => {
            spawn_local(tcp.clone().accept_loop(l));
        }
        Err(e) => {
            tracing::error!(worker = idx, "TCP listener: {e}");
            return;
        }
    }
    spawn_local(fwd.clone().release_held());
    spawn_local(super::memory::trim_periodically());
    spawn_local(fwd.clone().serve_tun());
    let mut quic = None;
    if let Some(sock) = listeners.quic {
        match Quic::new(sock, &shared.node.router_id) {
            Ok(q) => {
                spawn_local(q.clone().accept_loop(fwd.clone()));
                quic = Some(q);
            }
            Err(e) => tracing::error!(worker = idx, "QUIC endpoint: {e}"),
        }
    }
    if let Some(home) = home {
        spawn_local(message_task::run(shared.clone(), home.messages));
        if let Some(l) = home.local_socket {
            spawn_local(local_socket::serve(shared.clone(), l));
        }
        if let Some(port) = shared.settings.discovery_port {
            match discovery::bind(port) {
                Ok(sock) => {
                    spawn_local(discovery::run(shared.clone(), sock, port));
                }
                Err(e) => tracing::warn!("peer discovery on UDP port {port} disabled: {e}"),
            }
        }
    }
    let mut shutdown = shared.shutdown.clone();
    loop {
        let cmd = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            cmd = cmds.recv() => match cmd {
                Some(c) => c,
                None => break,
            },
        };
        match cmd {
            WorkerCmd::Dial(ep, kind) => match (ep.proto, &quic) {
                (Proto::Tcp, _) => {
                    spawn_local(tcp.clone().dial(ep, kind));
                }
                (Proto::Quic, Some(q)) => {
                    spawn_local(q.clone().dial(fwd.clone(), ep, kind));
                }
                (Proto::Quic, None) => {
                    let control = &shared.inbox.control;
                    let _ = control.send(ControlMsg::DialFailed(ep)).await;
                }
            },
            WorkerCmd::PacketStats(tx) => {
                let _ = tx.send(fwd.packet_stats());
            }
            WorkerCmd::Shutdown => break,
        }
    }
    // Tell QUIC peers we are going, so they drop the link at once instead of after their
    // dead-peer timeout.
    if let Some(q) = quic {
        q.close().await;
    }
}
