//! Starting and stopping a node: the key, the sockets (all bound before any thread starts, so
//! a bad address fails the start), the shared state, and the threads.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hyphae_proto::fib::FibWriter;
use hyphae_wire::RouterId;
use hyphae_wire::identity::PublicKey;
use tokio::sync::{mpsc, watch};

use super::admission::Admission;
use super::config::Settings;
use super::error::StartError;
use super::inbox::{CONTROL_QUEUE, Inboxes, MESSAGE_QUEUE};
use super::local_socket::{self, LocalListener};
use super::peers::PeerTable;
use super::shared::{Node, Shared, WorkerCounters};
use super::worker::{self, HomeTasks, Listeners, Workers, spawn_thread};
use super::{api, control, quic, sockopt, tcp, tun};

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
    workers: Workers,
    shutdown_tx: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Removes the local socket's file when the node stops.
    _local_socket: Option<LocalListener>,
}

impl Running {
    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.shared.node.public
    }

    /// Stops every thread (waiting up to 5 s).
    pub fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        self.workers.shutdown();
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
    let message_id_key = hyphae_wire::seal::random_bytes::<32>()
        .map_err(|e| StartError::Other(format!("no randomness: {e}")))?;
    let node = Node {
        address: public.address(),
        subnet: public.subnet(),
        secret,
        public,
        router_id,
        start_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        hash_seed,
        message_id_key,
    };
    tracing::info!(address = %node.address, subnet = %node.subnet, pubkey = %node.public, "node identity");

    if let Err(e) = sockopt::disable_transparent_huge_pages() {
        tracing::debug!("transparent huge pages left on: {e}");
    }
    match sockopt::raise_nofile_limit() {
        Ok(n) => tracing::debug!("open descriptor limit {n}"),
        Err(e) => tracing::warn!("open descriptor limit not raised: {e}"),
    }
    let driver = worker::pick_driver(settings.driver)?;
    let listeners = tcp::bind_listeners(settings.tcp_port, settings.workers, settings.tcp_rcvbuf)?;
    let quic_sockets = match settings.quic_port {
        Some(p) => quic::bind_sockets(p, settings.workers)?,
        None => Vec::new(),
    };
    let api_listener = api::bind(settings.api_addr, "admin API")?;
    let metrics_listener = match settings.metrics_addr {
        Some(a) => Some(api::bind(a, "metrics API")?),
        None => None,
    };
    let tun_queues = match &settings.tun_name {
        Some(name) => {
            let queues = tun::create(name, settings.workers, node.address)?;
            tracing::info!(name, address = %node.address, queues = queues.len(), "TUN device up");
            queues
        }
        None => Vec::new(),
    };
    let mut local_socket = match &settings.local_socket {
        Some(p) => Some(local_socket::bind(p, settings.local_socket_mode)?),
        None => None,
    };

    let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
    let (msg_tx, msg_rx) = mpsc::channel(MESSAGE_QUEUE);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut fib_writer = FibWriter::new(hash_seed);
    let shared = Arc::new(Shared {
        node,
        fib: fib_writer.reader(),
        peers: PeerTable::default(),
        route_keys: ArcSwap::default(),
        inbox: Inboxes {
            control: ctl_tx,
            messages: msg_tx,
        },
        counters: (0..settings.workers)
            .map(|_| WorkerCounters::default())
            .collect(),
        key_cache_evictions: AtomicU64::new(0),
        local_socket_unread_closes: AtomicU64::new(0),
        message_waits_refused: AtomicU64::new(0),
        route_use: super::shared::RouteUse::new(),
        shutdown: shutdown_rx,
        admission: Admission::new(settings.max_inbound, settings.max_inbound_per_address),
        settings: settings.clone(),
    });
    fib_writer.publish();

    let home = HomeTasks {
        messages: msg_rx,
        local_socket: local_socket.as_mut().and_then(LocalListener::take),
    };
    let mut quic_sockets = quic_sockets.into_iter();
    let mut tun_queues = tun_queues.into_iter();
    let listeners = listeners
        .into_iter()
        .map(|tcp| Listeners {
            tcp,
            quic: quic_sockets.next(),
            tun: tun_queues.next(),
        })
        .collect();
    let (workers, mut threads) = worker::spawn_all(&shared, driver, listeners, home)?;
    let (s, w) = (shared.clone(), workers.clone());
    threads.push(spawn_thread("hyphae-control", move || {
        control::run(s, ctl_rx, fib_writer, hash_seed, w)
    })?);
    let (s, w) = (shared.clone(), workers.clone());
    threads.push(spawn_thread("hyphae-api", move || {
        api::run(s, w, api_listener, metrics_listener)
    })?);
    tracing::info!(workers = settings.workers, driver = ?driver, tcp = settings.tcp_port,
        quic = ?settings.quic_port, api = %settings.api_addr, "hyphae-router running");
    // Once running: a node that cannot start says why in one line, and only that.
    if let Some(mode) = hyphae_wire::identity::key_file::readable_by_others(&settings.key_file) {
        tracing::warn!(
            "key file {}: mode {mode:03o} lets other users read the node's secret key; chmod 600 it",
            settings.key_file.display()
        );
    }

    Ok(Running {
        shared,
        workers,
        shutdown_tx,
        threads,
        _local_socket: local_socket,
    })
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
