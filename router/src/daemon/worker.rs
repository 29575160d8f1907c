//! One data-plane worker: a single-threaded runtime (tokio-uring, or tokio current-thread)
//! that owns its peer links, reads and forwards their frames and writes their queues.

use std::cell::RefCell;
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hyphae_wire::deframer::Deframer;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::spawn_local;

use super::config::DriverChoice;
use super::endpoint::{Endpoint, Proto};
use super::forward::{AddrCounts, Local, WorkerLocal, flush_pending, handle_frames};
use super::link::{LinkRead, LinkWrite, PortableRead, PortableWrite, READ_CHUNK};
use super::sockopt;
use super::{ControlMsg, PeerCounters, PeerHandle, PeerType, Shared, StartError, quic};
use hyphae_proto::babel::LinkKind;
use hyphae_proto::window::{BufferGovernor, DEFAULT_FLOOR};

/// The I/O driver a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Driver {
    /// io_uring through tokio-uring.
    Uring,
    /// Plain tokio (epoll).
    Portable,
}

/// Packet counts by address, for the admin API.
pub(crate) type PacketStats = (AddrCounts, AddrCounts);

/// A command to a worker.
#[derive(Debug)]
pub(crate) enum WorkerCmd {
    /// Connect to a peer.
    Dial(Endpoint, PeerType),
    /// Report packet counts by source and destination.
    PacketStats(oneshot::Sender<PacketStats>),
    /// Stop.
    Shutdown,
}

/// Decides the driver once, at start, and logs why.
pub(crate) fn pick_driver(choice: DriverChoice) -> Result<Driver, StartError> {
    let probe = uring_available();
    match (choice, probe) {
        (DriverChoice::Portable, _) => Ok(Driver::Portable),
        (_, Ok(())) => Ok(Driver::Uring),
        (DriverChoice::Uring, Err(e)) => {
            Err(StartError::Other(format!("io_uring unavailable: {e}")))
        }
        (DriverChoice::Auto, Err(e)) => {
            tracing::warn!("io_uring unavailable ({e}); using the portable driver");
            Ok(Driver::Portable)
        }
    }
}

#[cfg(target_os = "linux")]
fn uring_available() -> Result<(), String> {
    tokio_uring::Runtime::new(&tokio_uring::builder())
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A worker's io_uring runtime. Completions run as cooperative task work (no interrupt of a
/// running worker to deliver them) and the worker is the ring's only submitter, where the
/// kernel has those flags (cooperative task work since 5.19, single issuer since 6.0). Each
/// set of flags is probed on a one-entry ring first: a runtime that fails to build leaks its
/// tokio half in tokio-uring 0.5.
#[cfg(target_os = "linux")]
fn uring_runtime(idx: usize) -> std::io::Result<tokio_uring::Runtime> {
    let mut both = tokio_uring::uring_builder();
    both.setup_coop_taskrun().setup_single_issuer();
    let mut coop = tokio_uring::uring_builder();
    coop.setup_coop_taskrun();
    let (flags, name) = [
        (both, "cooperative task work, single issuer"),
        (coop, "cooperative task work"),
    ]
    .into_iter()
    .find(|(b, _)| b.build(1).is_ok())
    .unwrap_or_else(|| (tokio_uring::uring_builder(), "no setup flags"));
    tracing::debug!(worker = idx, "io_uring ring: {name}");
    tokio_uring::Runtime::new(tokio_uring::builder().uring_builder(&flags))
}

#[cfg(not(target_os = "linux"))]
fn uring_available() -> Result<(), String> {
    Err("not Linux".into())
}

/// One TCP listener per worker on the same port (SO_REUSEPORT), dual-stack `[::]`.
pub(crate) fn bind_tcp_listeners(
    port: u16,
    n: usize,
    rcvbuf: Option<usize>,
) -> Result<Vec<std::net::TcpListener>, StartError> {
    let addr: SocketAddr = (Ipv6Addr::UNSPECIFIED, port).into();
    let bind = |port_addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        if let Some(b) = rcvbuf {
            // Set before listening, so accepted sockets inherit it and announce a matching
            // window scale.
            s.set_recv_buffer_size(b)?;
        }
        s.bind(&port_addr.into())?;
        s.listen(1024)?;
        Ok(s.into())
    };
    let first = bind(addr).map_err(|source| StartError::Bind {
        what: "TCP listener",
        addr,
        source,
    })?;
    // With port 0 the kernel picked one: the others join it.
    let actual = first.local_addr().map_err(|source| StartError::Bind {
        what: "TCP listener",
        addr,
        source,
    })?;
    let mut v = vec![first];
    for _ in 1..n {
        v.push(bind(actual).map_err(|source| StartError::Bind {
            what: "TCP listener",
            addr: actual,
            source,
        })?);
    }
    Ok(v)
}

/// The message subsystem's inbox and the local socket, for the worker that runs them.
pub(crate) type MessageTask = (
    mpsc::Receiver<super::messages::MsgCmd>,
    Option<super::local::LocalListener>,
);

/// The worker thread's body.
pub(crate) fn run(
    idx: usize,
    shared: Arc<Shared>,
    driver: Driver,
    listener: std::net::TcpListener,
    quic: Option<UdpSocket>,
    messages: Option<MessageTask>,
    cmds: mpsc::UnboundedReceiver<WorkerCmd>,
) {
    let fut = worker_main(idx, shared, driver, listener, quic, messages, cmds);
    match driver {
        #[cfg(target_os = "linux")]
        Driver::Uring => match uring_runtime(idx) {
            Ok(rt) => rt.block_on(fut),
            Err(e) => tracing::error!(worker = idx, "io_uring runtime: {e}"),
        },
        #[cfg(not(target_os = "linux"))]
        Driver::Uring => tracing::error!("io_uring needs Linux"),
        Driver::Portable => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => tokio::task::LocalSet::new().block_on(&rt, fut),
            Err(e) => tracing::error!(worker = idx, "runtime: {e}"),
        },
    }
}

async fn worker_main(
    idx: usize,
    shared: Arc<Shared>,
    driver: Driver,
    listener: std::net::TcpListener,
    quic: Option<UdpSocket>,
    messages: Option<MessageTask>,
    mut cmds: mpsc::UnboundedReceiver<WorkerCmd>,
) {
    // The packet-count tables are keyed by addresses peers choose: seed their hash randomly.
    let seed = hyphae_wire::seal::random_nonce().map_or(idx as u64, |n| {
        u64::from_le_bytes([n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7]])
    });
    let local: Local = Rc::new(RefCell::new(WorkerLocal::with_seed(seed)));
    let w = Worker {
        idx,
        shared: shared.clone(),
        driver,
        local,
    };
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = idx, "TCP listener: {e}");
            return;
        }
    };
    spawn_local(w.clone().accept_loop(listener));
    if let Some((inbox, local)) = messages {
        spawn_local(super::messages::serve(shared.clone(), inbox, local));
    }
    let quic_ep = match quic {
        Some(sock) => match quic::Quic::new(sock, &shared) {
            Ok(q) => {
                spawn_local(q.clone().accept_loop(w.clone()));
                Some(q)
            }
            Err(e) => {
                tracing::error!("QUIC endpoint: {e}");
                None
            }
        },
        None => None,
    };
    if idx == 0
        && let Some(port) = shared.settings.discovery_port
    {
        match super::discovery::bind(port) {
            Ok(sock) => {
                spawn_local(super::discovery::run(shared.clone(), sock, port));
            }
            Err(e) => tracing::warn!("peer discovery on UDP port {port} disabled: {e}"),
        }
    }
    spawn_local(pending_loop(w.clone()));
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            WorkerCmd::Dial(ep, kind) => match ep.proto {
                Proto::Tcp => {
                    spawn_local(w.clone().dial_tcp(ep, kind));
                }
                Proto::Quic => match &quic_ep {
                    Some(q) => {
                        spawn_local(q.clone().dial(w.clone(), ep, kind));
                    }
                    None => {
                        let _ = shared.ctl.send(ControlMsg::DialFailed(ep)).await;
                    }
                },
            },
            WorkerCmd::PacketStats(tx) => {
                let l = w.local.borrow();
                let _ = tx.send((l.by_source.clone(), l.by_destination.clone()));
            }
            WorkerCmd::Shutdown => break,
        }
    }
    // Tell QUIC peers we are going, so they drop the link at once instead of after their
    // dead-peer timeout.
    if let Some(q) = quic_ep {
        q.close().await;
    }
}

/// Sets a TCP link's window clamp and receive buffer to `bytes`. If the buffer cannot be set
/// the clamp is lifted again, leaving the link to autotuning.
fn size_receive_buffer(fd: std::os::fd::RawFd, bytes: u32) -> std::io::Result<()> {
    let before = sockopt::window_clamp(fd);
    sockopt::set_window_clamp(fd, bytes)?;
    sockopt::set_rcvbuf(fd, bytes).inspect_err(|_| {
        if let Some(c) = before {
            let _ = sockopt::set_window_clamp(fd, c);
        }
    })
}

/// Half the largest buffer autotuning may give a TCP socket (`net.ipv4.tcp_rmem`), which the
/// kernel doubles back: the governor never asks for more than autotuning could have reached.
fn autotune_ceiling() -> u32 {
    static CEILING: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *CEILING.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem")
            .ok()
            .and_then(|v| v.split_whitespace().nth(2)?.parse::<u32>().ok())
            .map_or(hyphae_proto::window::CEILING, |max| max / 2)
    })
}

/// Releases frames held for routes that appeared: sleeps until a frame is held, then checks
/// every 5 ms while any are.
async fn pending_loop(w: Worker) {
    let mut shutdown = w.shared.shutdown.clone();
    let wake = w.local.borrow().pending_wake.clone();
    loop {
        let held = w.local.borrow().has_pending();
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = wake.notified(), if !held => continue,
            _ = tokio::time::sleep(Duration::from_millis(5)), if held => {}
        }
        flush_pending(
            &w.shared,
            &w.shared.counters[w.idx],
            &w.local,
            Instant::now(),
        );
    }
}

/// What a worker's tasks share.
#[derive(Clone)]
pub(crate) struct Worker {
    pub(crate) idx: usize,
    pub(crate) shared: Arc<Shared>,
    driver: Driver,
    pub(crate) local: Local,
}

pub(crate) fn link_kind(proto: Proto, addr: SocketAddr) -> LinkKind {
    let v4 = match addr {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    match (proto, v4) {
        (Proto::Tcp, true) => LinkKind::TcpV4,
        (Proto::Tcp, false) => LinkKind::TcpV6,
        (Proto::Quic, true) => LinkKind::QuicV4,
        (Proto::Quic, false) => LinkKind::QuicV6,
    }
}

pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => addr,
        },
        v4 => v4,
    }
}

impl Worker {
    async fn accept_loop(self, listener: tokio::net::TcpListener) {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            let r = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                r = listener.accept() => r,
            };
            match r {
                Ok((stream, remote)) => {
                    let ep = Endpoint {
                        proto: Proto::Tcp,
                        addr: canonical(remote),
                    };
                    self.start_tcp(stream, ep, PeerType::Inbound);
                }
                Err(e) => {
                    tracing::warn!(worker = self.idx, "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn dial_tcp(self, ep: Endpoint, kind: PeerType) {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(ep.addr),
        )
        .await;
        match r {
            Ok(Ok(stream)) => self.start_tcp(stream, ep, kind),
            Ok(Err(e)) => {
                tracing::debug!(%ep, "connect: {e}");
                let _ = self.shared.ctl.send(ControlMsg::DialFailed(ep)).await;
            }
            Err(_) => {
                tracing::debug!(%ep, "connect timed out");
                let _ = self.shared.ctl.send(ControlMsg::DialFailed(ep)).await;
            }
        }
    }

    fn start_tcp(&self, stream: tokio::net::TcpStream, ep: Endpoint, kind: PeerType) {
        let _ = stream.set_nodelay(true);
        // Keep the kernel's unsent backlog short: frames wait in our bounded per-peer queue,
        // where they can be dropped and counted, rather than in an autotuned send buffer
        // (in-flight data, and so throughput over long paths, is not limited by this).
        let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(TCP_NOTSENT_LOWAT);
        if let Some(n) = self.shared.settings.tcp_rcvbuf {
            let _ = socket2::SockRef::from(&stream).set_recv_buffer_size(n);
        }
        let local_addr = stream.local_addr().map_or(ep.addr, canonical);
        let lk = link_kind(Proto::Tcp, ep.addr);
        match self.driver {
            Driver::Portable => {
                let (r, w) = stream.into_split();
                spawn_local(self.clone().run_link(
                    ep,
                    local_addr,
                    kind,
                    lk,
                    PortableRead(r),
                    PortableWrite(w),
                    None,
                ));
            }
            #[cfg(target_os = "linux")]
            Driver::Uring => {
                let std = match stream
                    .into_std()
                    .and_then(|s| s.set_nonblocking(false).map(|()| s))
                {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(%ep, "socket: {e}");
                        return;
                    }
                };
                let s = Rc::new(tokio_uring::net::TcpStream::from_std(std));
                let (r, w) = (
                    super::link::UringRead(s.clone()),
                    super::link::UringWrite(s),
                );
                spawn_local(self.clone().run_link(ep, local_addr, kind, lk, r, w, None));
            }
            #[cfg(not(target_os = "linux"))]
            Driver::Uring => {}
        }
    }

    /// Runs one peer link until it fails or is closed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_link<R: LinkRead + 'static, W: LinkWrite + 'static>(
        self,
        endpoint: Endpoint,
        local_addr: SocketAddr,
        kind: PeerType,
        link: LinkKind,
        mut reader: R,
        writer: W,
        datagrams: Option<quinn::Connection>,
    ) {
        let shared = self.shared.clone();
        let (data_tx, data_rx) = mpsc::unbounded_channel();
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (close, mut close_rx) = watch::channel(false);
        let handle = Arc::new(PeerHandle {
            id: shared.next_peer_id(),
            endpoint,
            local: local_addr,
            kind,
            data_tx,
            queued: Default::default(),
            ctl_tx,
            counters: PeerCounters::default(),
            close,
        });
        tracing::info!(peer = handle.id.0, %endpoint, kind = kind.as_str(), worker = self.idx, "peer up");
        shared.add_peer(handle.clone());
        if shared
            .ctl
            .send(ControlMsg::PeerUp {
                handle: handle.clone(),
                link,
            })
            .await
            .is_err()
        {
            shared.remove_peer(handle.id);
            return;
        }
        let writer_task = spawn_local(write_loop(handle.clone(), writer, data_rx, ctl_rx));
        if let Some(conn) = datagrams {
            spawn_local(quic::datagram_loop(self.clone(), handle.clone(), conn));
        }
        let counters = &shared.counters[self.idx];
        let mut shutdown = shared.shutdown.clone();
        let mut buf = BytesMut::with_capacity(2 * READ_CHUNK);
        let mut deframer = Deframer::new();
        let mut frames = Vec::with_capacity(256);
        // TCP links: the receive buffer follows the link's bandwidth-delay product (unless the
        // operator fixed it with --tcp-rcvbuf).
        let mut window = reader
            .tcp_fd()
            .filter(|_| shared.settings.tcp_window_governor && shared.settings.tcp_rcvbuf.is_none())
            .and_then(|fd| {
                let gov = BufferGovernor::new(DEFAULT_FLOOR, autotune_ceiling());
                size_receive_buffer(fd, gov.floor()).ok()?;
                Some((fd, gov, 0u64))
            });
        'link: loop {
            let (r, b) = tokio::select! {
                biased;
                _ = close_rx.wait_for(|c| *c) => break,
                _ = shutdown.wait_for(|s| *s) => break,
                r = reader.read(buf) => r,
            };
            buf = b;
            match r {
                Ok(0) => break,
                Ok(n) => {
                    handle.counters.rx_bytes.fetch_add(n as u64, Relaxed);
                    if let Some((fd, gov, read)) = &mut window {
                        *read += n as u64;
                        let now = Instant::now();
                        if gov.due(now) {
                            let queued = sockopt::queued(*fd).unwrap_or(u32::MAX);
                            if let Some(size) = gov.sample(now, *read, sockopt::rtt(*fd), queued)
                                && let Err(e) = size_receive_buffer(*fd, size)
                            {
                                tracing::debug!(peer = handle.id.0, "receive buffer: {e}");
                                window = None;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = handle.id.0, "read: {e}");
                    break;
                }
            }
            let corrupt = loop {
                match deframer.next_frame(&mut buf) {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            };
            handle
                .counters
                .rx_frames
                .fetch_add(frames.len() as u64, Relaxed);
            handle_frames(&shared, counters, &self.local, &handle, &mut frames);
            // Let this worker's writers drain what the read queued before reading more: a peer
            // sending in bursts must not fill another peer's queue before it can be written.
            tokio::task::yield_now().await;
            if let Some(e) = corrupt {
                counters.framing_errors.fetch_add(1, Relaxed);
                tracing::warn!(peer = handle.id.0, %endpoint, "closing link: corrupt framing: {e}");
                break 'link;
            }
        }
        let _ = handle.close.send(true);
        shared.remove_peer(handle.id);
        let _ = shared
            .ctl
            .send(ControlMsg::PeerDown { peer: handle.id })
            .await;
        let _ = writer_task.await;
        tracing::info!(peer = handle.id.0, %endpoint, "peer down");
    }
}

/// Unsent bytes the kernel may hold per TCP peer socket.
const TCP_NOTSENT_LOWAT: u32 = 128 * 1024;

/// Maximum frames moved from the queues into one vectored write.
const WRITE_BATCH: usize = 512;

async fn write_loop<W: LinkWrite>(
    h: Arc<PeerHandle>,
    mut w: W,
    mut data_rx: mpsc::UnboundedReceiver<(Bytes, u32)>,
    mut ctl_rx: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut close_rx = h.close.subscribe();
    let mut batch: Vec<Bytes> = Vec::with_capacity(WRITE_BATCH);
    let mut runs: Vec<(Bytes, u32)> = Vec::with_capacity(WRITE_BATCH);
    loop {
        tokio::select! {
            biased;
            _ = close_rx.wait_for(|c| *c) => break,
            Some(c) = ctl_rx.recv() => {
                batch.push(c);
                while let Ok(c) = ctl_rx.try_recv() {
                    batch.push(c);
                }
                while runs.len() < WRITE_BATCH {
                    match data_rx.try_recv() {
                        Ok(d) => runs.push(d),
                        Err(_) => break,
                    }
                }
            }
            n = data_rx.recv_many(&mut runs, WRITE_BATCH) => {
                if n == 0 {
                    break;
                }
                while let Ok(c) = ctl_rx.try_recv() {
                    batch.push(c);
                }
            }
        }
        let ctl_frames = batch.len() as u64;
        let mut data_bytes = 0;
        let mut frames = ctl_frames;
        for (run, n) in runs.drain(..) {
            data_bytes += run.len();
            frames += u64::from(n);
            batch.push(run);
        }
        let bytes: usize = batch.iter().map(Bytes::len).sum();
        let (r, b) = w.write_batch(std::mem::take(&mut batch)).await;
        batch = b;
        batch.clear();
        h.queued.fetch_sub(data_bytes, Relaxed);
        if let Err(e) = r {
            tracing::debug!(peer = h.id.0, "write: {e}");
            break;
        }
        h.counters.tx_frames.fetch_add(frames, Relaxed);
        h.counters.tx_bytes.fetch_add(bytes as u64, Relaxed);
    }
    let _ = h.close.send(true);
}
