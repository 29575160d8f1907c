//! One peer link, whatever carries it (TCP, or a QUIC stream with its datagrams): announced
//! to the control thread, read and deframed into the worker's [`Forwarder`], and written from
//! the link's queues in vectored batches, until it fails or is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use hyphae_proto::babel::LinkKind;
use hyphae_proto::window::{BufferGovernor, CEILING, DEFAULT_FLOOR};
use hyphae_wire::deframer::Deframer;
use tokio::sync::{mpsc, watch};
use tokio::task::spawn_local;

use super::endpoint::Endpoint;
use super::forward::Forwarder;
use super::inbox::ControlMsg;
use super::link::{LinkRead, LinkWrite, ReadSizer};
use super::peers::{ControlRun, PeerCounters, PeerHandle, PeerType, QueuedRun};
use super::sockopt;

/// Unsent bytes the kernel may hold per TCP peer socket.
pub(crate) const TCP_NOTSENT_LOWAT: u32 = 128 * 1024;
/// Maximum frames moved from the queues into one vectored write.
const WRITE_BATCH: usize = 512;

/// What is known of a link before it is announced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkInfo {
    /// The remote endpoint.
    pub(crate) endpoint: Endpoint,
    /// Our address on it.
    pub(crate) local: SocketAddr,
    /// How it came to be.
    pub(crate) kind: PeerType,
    /// Its transport, for the static link cost.
    pub(crate) link: LinkKind,
}

/// A link that is up, and the receiving ends of its queues (for [`serve`]).
#[derive(Debug)]
pub(crate) struct Up {
    /// The link as the rest of the daemon sees it.
    pub(crate) handle: Arc<PeerHandle>,
    data_rx: mpsc::UnboundedReceiver<QueuedRun>,
    ctl_rx: mpsc::UnboundedReceiver<ControlRun>,
    /// Held from the start, so a close sent before [`serve`] runs is not lost.
    close_rx: watch::Receiver<bool>,
}

/// Registers a new link in the peer table and announces it to the control thread. `None` if
/// the control thread is gone (shutting down).
pub(crate) async fn up(fwd: &Forwarder, info: LinkInfo) -> Option<Up> {
    let shared = fwd.shared();
    let (data_tx, data_rx) = mpsc::unbounded_channel();
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let (close, close_rx) = watch::channel(false);
    let handle = Arc::new(PeerHandle {
        id: shared.peers.next_id(),
        endpoint: info.endpoint,
        local: info.local,
        kind: info.kind,
        worker: fwd.worker(),
        data_tx,
        queued: Default::default(),
        ctl_tx,
        ctl_queued: Default::default(),
        counters: PeerCounters::default(),
        close,
        drained: Default::default(),
        direct: Default::default(),
    });
    tracing::info!(peer = handle.id.0, endpoint = %info.endpoint, kind = info.kind.as_str(),
        worker = fwd.worker(), "peer up");
    shared.peers.insert(handle.clone());
    let msg = ControlMsg::PeerUp {
        handle: handle.clone(),
        link: info.link,
    };
    if shared.inbox.control.send(msg).await.is_err() {
        shared.peers.remove(handle.id);
        return None;
    }
    Some(Up {
        handle,
        data_rx,
        ctl_rx,
        close_rx,
    })
}

/// Runs a link that is [`up`] until it fails or is closed, then takes it down.
pub(crate) async fn serve<R: LinkRead + 'static, W: LinkWrite + 'static>(
    fwd: Forwarder,
    link: Up,
    mut reader: R,
    writer: W,
) {
    let Up {
        handle,
        data_rx,
        ctl_rx,
        mut close_rx,
    } = link;
    let shared = fwd.shared().clone();
    let endpoint = handle.endpoint;
    let writer = DirectGuard {
        h: handle.clone(),
        w: writer,
        held: false,
    };
    if let Some(fd) = reader.tcp_fd() {
        handle.direct.open(fd);
    }
    let writer_task = spawn_local(write_loop(handle.clone(), writer, data_rx, ctl_rx));
    let counters = fwd.counters();
    let mut shutdown = shared.shutdown.clone();
    let mut sizer = ReadSizer::new();
    let mut buf = BytesMut::new();
    let mut deframer = Deframer::new();
    // Grows with what the link reads: an idle link holds none (256 slots were 18 KiB).
    let mut frames = Vec::new();
    let mut deferred = Vec::new();
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
    loop {
        sizer.prepare(&mut buf);
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
                sizer.record(n);
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
        fwd.handle_frames(&handle, &mut frames, &mut deferred);
        // Control TLVs the control thread had no room for: wait for it before reading more.
        fwd.send_deferred(&mut deferred).await;
        // Let this worker's writers drain what the read queued before reading more: a peer
        // sending in bursts must not fill another peer's queue before it can be written.
        tokio::task::yield_now().await;
        if let Some(e) = corrupt {
            counters.framing_errors.fetch_add(1, Relaxed);
            tracing::warn!(peer = handle.id.0, %endpoint, "closing link: corrupt framing: {e}");
            break;
        }
    }
    let _ = handle.close.send(true);
    shared.peers.remove(handle.id);
    let _ = shared
        .inbox
        .control
        .send(ControlMsg::PeerDown { peer: handle.id })
        .await;
    let _ = writer_task.await;
    tracing::info!(peer = handle.id.0, %endpoint, "peer down");
}

/// A link's write half, which ends direct writes to its socket (see
/// `PeerHandle::try_enqueue`) before it closes, however its task ends: the socket's
/// descriptor must not be closed, and perhaps reused, under a direct write.
struct DirectGuard<W> {
    h: Arc<PeerHandle>,
    w: W,
    /// Whether this writer holds the socket now.
    held: bool,
}

impl<W> Drop for DirectGuard<W> {
    fn drop(&mut self) {
        self.h.direct.close(self.held);
    }
}

/// Writes a link's control and data queues (control first) in vectored batches until the
/// link closes or a write fails.
async fn write_loop<W: LinkWrite>(
    h: Arc<PeerHandle>,
    mut w: DirectGuard<W>,
    mut data_rx: mpsc::UnboundedReceiver<QueuedRun>,
    mut ctl_rx: mpsc::UnboundedReceiver<ControlRun>,
) {
    let mut close_rx = h.close.subscribe();
    // Both grow with what the link writes: a quiet link never holds room for WRITE_BATCH.
    let mut batch: Vec<Bytes> = Vec::new();
    let mut runs: Vec<QueuedRun> = Vec::new();
    let mut ctl_frames = 0u64;
    loop {
        tokio::select! {
            biased;
            _ = close_rx.wait_for(|c| *c) => break,
            Some(c) = ctl_rx.recv() => {
                take_control(c, &mut batch, &mut ctl_frames);
                while let Ok(c) = ctl_rx.try_recv() {
                    take_control(c, &mut batch, &mut ctl_frames);
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
                    take_control(c, &mut batch, &mut ctl_frames);
                }
            }
        }
        // The socket is this writer's while it writes: no direct write (from another thread,
        // see `PeerHandle::try_enqueue`) starts meanwhile, and the end of one the socket did
        // not take whole goes first.
        h.direct.hold().await;
        w.held = true;
        let ctl_bytes: usize = batch.iter().map(Bytes::len).sum();
        let mut data_bytes = 0;
        let mut frames = std::mem::take(&mut ctl_frames);
        if let Some(rest) = h.direct.take_rest() {
            data_bytes += rest.bytes.len();
            frames += u64::from(rest.frames);
            batch.insert(0, rest.bytes);
        }
        for run in runs.drain(..) {
            data_bytes += run.bytes.len();
            frames += u64::from(run.frames);
            batch.push(run.bytes);
        }
        // A direct write that left an end for this writer wakes it with an empty run; the end
        // may already have gone out with an earlier batch. An empty write returns 0, which
        // would read as a dead socket: empty runs are not written.
        batch.retain(|b| !b.is_empty());
        if batch.is_empty() {
            h.direct.release();
            w.held = false;
            continue;
        }
        let bytes: usize = batch.iter().map(Bytes::len).sum();
        // A peer that stopped reading blocks this write for ever: when the link is closed
        // (the peer declared dead, or the reader gone), the write is given up with it.
        let (r, b) = tokio::select! {
            biased;
            _ = close_rx.wait_for(|c| *c) => break,
            r = w.w.write_batch(std::mem::take(&mut batch)) => r,
        };
        batch = b;
        batch.clear();
        h.queued.fetch_sub(data_bytes, Relaxed);
        h.ctl_queued.fetch_sub(ctl_bytes, Relaxed);
        if data_bytes > 0 {
            h.drained.notify_waiters();
        }
        if let Err(e) = r {
            // Part of a frame may have gone out: the socket stays held, so no direct write
            // follows it, until the guard closes it.
            tracing::debug!(peer = h.id.0, "write: {e}");
            break;
        }
        h.direct.release();
        w.held = false;
        h.counters.tx_frames.fetch_add(frames, Relaxed);
        h.counters.tx_bytes.fetch_add(bytes as u64, Relaxed);
    }
    let _ = h.close.send(true);
}

/// Adds a queued control run to the writer's batch.
fn take_control(c: ControlRun, batch: &mut Vec<Bytes>, frames: &mut u64) {
    *frames += u64::from(c.frames);
    batch.push(c.bytes);
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
    static AUTOTUNE_CEILING: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *AUTOTUNE_CEILING.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem")
            .ok()
            .and_then(|v| v.split_whitespace().nth(2)?.parse::<u32>().ok())
            .map_or(CEILING, |max| max / 2)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hyphae_test_support::tcp_pair;
    use tokio::io::AsyncReadExt;

    use super::super::link::PortableWrite;
    use super::super::peers::Full;
    use super::*;

    /// A direct write that the socket takes in part wakes the writer with an empty run. If the
    /// writer already wrote the end with an earlier batch (it was woken by a control frame
    /// while the direct write held the socket), the empty run arrives alone: it must not be
    /// written, since an empty write returns 0, which reads as a dead socket.
    #[test]
    fn an_empty_run_alone_does_not_close_the_link() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, async {
            let (h, data_rx, ctl_rx) = PeerHandle::for_test();
            let h = Arc::new(h);
            let (a, b) = tcp_pair();
            for s in [&a, &b] {
                s.set_nonblocking(true).unwrap();
            }
            let (_read, write) = tokio::net::TcpStream::from_std(a).unwrap().into_split();
            let mut b = tokio::net::TcpStream::from_std(b).unwrap();
            let w = DirectGuard {
                h: h.clone(),
                w: PortableWrite(write),
                held: false,
            };
            let writer = spawn_local(write_loop(h.clone(), w, data_rx, ctl_rx));
            h.data_tx
                .send(QueuedRun {
                    bytes: Bytes::new(),
                    frames: 0,
                })
                .unwrap();
            // The writer takes the empty run in a batch of its own.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(h.enqueue(Bytes::from_static(b"after"), 1));
            let mut got = [0; 5];
            tokio::time::timeout(Duration::from_secs(10), b.read_exact(&mut got))
                .await
                .expect("the run after it is written")
                .unwrap();
            assert_eq!(&got, b"after");
            assert!(!*h.close.borrow(), "the link is up");
            assert!(!writer.is_finished());
            assert_eq!(h.counters.tx_frames.load(Relaxed), 1);
            assert_eq!(h.queued.load(Relaxed), 0);
        });
    }

    /// Frames of the stress test below: length (u32), sender, sequence number (u32), then
    /// bytes that follow from the two.
    fn frame(sender: u8, seq: u32) -> Bytes {
        let len = 16 + (seq as usize * 7919 + usize::from(sender) * 131) % 3000;
        let mut f = Vec::with_capacity(len);
        f.extend_from_slice(&(len as u32).to_be_bytes());
        f.push(sender);
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend((9..len).map(|i| (i as u32 ^ seq ^ u32::from(sender)) as u8));
        Bytes::from(f)
    }

    /// Threads other than the link's worker write data runs straight to the socket or queue
    /// them (waiting for room when the queue is full), another queues control frames, the
    /// real writer writes, and the peer reads slowly (so direct writes often go out in part):
    /// every frame arrives whole, each sender's data frames all and in the order it sent
    /// them, and the control frames not dropped in order too.
    #[test]
    fn direct_and_queued_writes_from_many_threads_arrive_whole_and_in_order() {
        use std::io::Read;
        use std::os::fd::AsRawFd;

        const SENDERS: u8 = 4;
        const FRAMES: u32 = 4000;
        let (h, data_rx, ctl_rx) = PeerHandle::for_test();
        let h = Arc::new(h);
        let (a, mut b) = tcp_pair();
        a.set_nonblocking(true).unwrap();
        h.direct.open(a.as_raw_fd());
        // The link's worker: its writer, on a thread of its own.
        let wh = h.clone();
        let worker = std::thread::spawn(move || {
            super::super::peers::set_current_worker(0);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            tokio::task::LocalSet::new().block_on(&rt, async move {
                let (_read, write) = tokio::net::TcpStream::from_std(a).unwrap().into_split();
                let w = DirectGuard {
                    h: wh.clone(),
                    w: PortableWrite(write),
                    held: false,
                };
                write_loop(wh, w, data_rx, ctl_rx).await;
            });
        });
        let senders: Vec<_> = (0..SENDERS)
            .map(|sender| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for seq in 0..FRAMES {
                        let mut f = frame(sender, seq);
                        if sender == 0 {
                            // Control frames: bounded, dropped when their queue is full.
                            h.enqueue_control(f, 1);
                            std::thread::sleep(Duration::from_micros(20));
                            continue;
                        }
                        // Data waits for room, as this node's own traffic does.
                        while let Err(Full::Queue(back)) = h.try_enqueue(f, 1) {
                            f = back;
                            std::thread::sleep(Duration::from_micros(100));
                        }
                    }
                })
            })
            .collect();
        let mut last: Vec<Option<u32>> = vec![None; usize::from(SENDERS)];
        let mut done = 1; // the control sender's frames may be dropped
        let mut n = 0u64;
        while done < SENDERS {
            let mut head = [0; 9];
            b.read_exact(&mut head).unwrap();
            let len = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
            let sender = head[4];
            let seq = u32::from_be_bytes(head[5..9].try_into().unwrap());
            assert!(sender < SENDERS, "frame {n}: sender {sender}: a torn frame");
            let mut body = vec![0; len - 9];
            b.read_exact(&mut body).unwrap();
            let whole = frame(sender, seq) == [&head[..], &body].concat();
            assert!(whole, "frame {n} (sender {sender}, {seq}): not whole");
            let prev = &mut last[usize::from(sender)];
            if sender == 0 {
                assert!(
                    prev.is_none_or(|p| p < seq),
                    "control: {seq} after {prev:?}"
                );
            } else {
                // Data is never refused here: every frame, in order.
                assert_eq!(
                    seq,
                    prev.map_or(0, |p| p + 1),
                    "sender {sender}: after {prev:?}"
                );
            }
            *prev = Some(seq);
            if sender != 0 && seq + 1 == FRAMES {
                done += 1;
            }
            n += 1;
            if n.is_multiple_of(64) {
                // A slow reader: the socket fills and direct writes go out in part.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        for s in senders {
            s.join().unwrap();
        }
        let _ = h.close.send(true);
        worker.join().unwrap();
        assert!(n > u64::from(FRAMES), "most frames arrived: {n}");
    }
}
