//! Variant (c): one hand-written loop on the io-uring crate, with the ring as the thread's only
//! wait point.
//!
//! * Every inbound connection has a multishot receive armed into one provided-buffer ring; it
//!   is armed again when it ends (`-ENOBUFS` when the ring ran dry, as liburing#1275 warns).
//! * Frames are assembled where the kernel put them ([`frames`](super::frames)): no copies.
//! * Each output has at most one `sendmsg` in flight, with up to 1024 chunks as `iovec`s; what
//!   a partial send left goes first next time.
//! * Each loop turn is one `io_uring_enter` (`submit_and_wait(1)`): it submits the turn's
//!   sends and re-arms, and waits for completions.

use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use anyhow::{Context, Result, ensure};

use super::frames::{Queue, Refs, Stream, parse};
use super::sys::{Completion, TaskRun, Uring};

/// Submission-queue entries (each turn pushes at most one SQE per connection).
const SQ_ENTRIES: u32 = 256;

/// The loop's settings.
#[derive(Debug, Clone, Copy)]
pub(super) struct Config {
    /// Provided buffers (a power of two).
    pub(super) bufs: u16,
    /// Bytes per provided buffer.
    pub(super) buf_size: u32,
    /// Task-run mode asked for first.
    pub(super) taskrun: TaskRun,
}

/// What a hand-written loop ((c) or (d)) did over the whole run, warm-up and drain included.
#[derive(Debug, Clone, Default)]
pub(super) struct Report {
    /// Ring setup flags the kernel accepted ((c)), or "epoll" ((d)).
    pub(super) setup: &'static str,
    /// Loop turns, each one `io_uring_enter` ((c)) or one `epoll_wait` ((d)).
    pub(super) turns: u64,
    /// Completions ((c)) or readiness events ((d)).
    pub(super) events: u64,
    /// Receives that carried data.
    pub(super) recvs: u64,
    /// Sends, and `iovec`s in them.
    pub(super) sends: u64,
    pub(super) iovecs: u64,
    /// Sends that wrote only part of their chunks.
    pub(super) partial_sends: u64,
    /// Times receiving stopped for want of free buffers: (c) multishot receives that ended
    /// with `-ENOBUFS`, (d) reads skipped with the pool empty.
    pub(super) starved: u64,
    /// (c): multishot receives armed again.
    pub(super) rearms: u64,
    /// (d): reads that found nothing (`EAGAIN`).
    pub(super) eagain: u64,
    /// (c): receive completions that said the receive stays armed (multishot works).
    pub(super) multishot_more: u64,
    /// Frames whose header straddled two buffers.
    pub(super) split_headers: u64,
}

#[derive(Debug)]
struct Inbound {
    armed: bool,
    eof: bool,
    stream: Stream,
}

/// Forwards from `ins` to `outs` until every input has ended and every output is written;
/// `enters` follows the `io_uring_enter` count as it goes.
pub(super) fn run(
    ins: Vec<TcpStream>,
    outs: Vec<TcpStream>,
    cfg: Config,
    enters: &AtomicU64,
) -> Result<Report> {
    let mut ring = Uring::new(SQ_ENTRIES, cfg.bufs, cfg.buf_size, outs.len(), cfg.taskrun)
        .context("io_uring setup")?;
    let mut rep = Report {
        setup: ring.setup(),
        ..Report::default()
    };
    let r = forward(&mut ring, &ins, &outs, enters, &mut rep);
    if r.is_ok() {
        for s in &outs {
            s.shutdown(Shutdown::Write)?;
        }
    } else {
        // Ends the receives and sends still in flight; whatever remains when the ring is
        // dropped keeps its memory (leaked).
        for s in ins.iter().chain(&outs) {
            let _ = s.shutdown(Shutdown::Both);
        }
        let mut cqes = Vec::new();
        for _ in 0..100 {
            if !ring.busy() || ring.submit_and_wait(1).is_err() {
                break;
            }
            cqes.clear();
            ring.reap(&mut cqes);
        }
    }
    r.map(|()| rep)
}

fn forward(
    ring: &mut Uring,
    ins: &[TcpStream],
    outs: &[TcpStream],
    enters: &AtomicU64,
    rep: &mut Report,
) -> Result<()> {
    let mut inb: Vec<Inbound> = ins
        .iter()
        .map(|_| Inbound {
            armed: false,
            eof: false,
            stream: Stream::new(),
        })
        .collect();
    let mut queues: Vec<Queue> = outs.iter().map(|_| Queue::default()).collect();
    // Whether each output has a send in flight.
    let mut busy = vec![false; outs.len()];
    let mut refs = Refs::new(ring.free_buffers());
    // Re-arm a receive only when this many buffers are free, so an empty ring does not turn
    // into a stream of -ENOBUFS completions.
    let rearm_at = (ring.free_buffers() / 16).max(1);
    for (i, s) in ins.iter().enumerate() {
        ring.push_recv(s.as_raw_fd(), i)?;
        inb[i].armed = true;
    }
    let mut cqes = Vec::with_capacity(1024);
    let mut pokes = Vec::new();
    loop {
        ring.submit_and_wait(1)?;
        rep.turns += 1;
        enters.store(rep.turns, Relaxed);
        ring.reap(&mut cqes);
        rep.events += cqes.len() as u64;
        for c in cqes.drain(..) {
            match c {
                Completion::Recv {
                    conn,
                    res,
                    bid,
                    more,
                } => {
                    let s = &mut inb[conn];
                    s.armed = more;
                    rep.multishot_more += u64::from(more);
                    if let (Some(b), true) = (bid, res <= 0) {
                        ring.recycle(b);
                    }
                    match res {
                        n if n > 0 => {
                            let bid = bid.context("a receive without a buffer")?;
                            rep.recvs += 1;
                            refs.hold(bid)?;
                            let data = ring.data_mut(bid, n as usize);
                            rep.split_headers += parse(
                                &mut s.stream,
                                bid,
                                data,
                                &mut queues,
                                &mut refs,
                                &mut pokes,
                            )?;
                            for p in pokes.drain(..) {
                                ring.poke(p.bid, p.off, p.value);
                            }
                            if refs.release(bid) {
                                ring.recycle(bid);
                            }
                        }
                        0 => {
                            ensure!(s.stream.at_boundary(), "input {conn} ended inside a frame");
                            s.eof = true;
                        }
                        e => {
                            ensure!(-e == libc::ENOBUFS, "receive on input {conn}: {}", errno(e));
                            rep.starved += 1;
                        }
                    }
                }
                Completion::Send { slot, res } => {
                    busy[slot] = false;
                    ensure!(res > 0, "send on output {slot}: {}", errno(res));
                    let partial =
                        queues[slot].finish_send(res as usize, &mut refs, |b| ring.recycle(b));
                    rep.partial_sends += u64::from(partial);
                }
            }
        }
        for (j, (q, s)) in queues.iter_mut().zip(outs).enumerate() {
            if busy[j] || q.is_empty() {
                continue;
            }
            let chunks = q.start_send();
            rep.sends += 1;
            rep.iovecs += chunks.len() as u64;
            ring.push_send(j, s.as_raw_fd(), chunks)?;
            busy[j] = true;
        }
        for (i, (b, s)) in inb.iter_mut().zip(ins).enumerate() {
            if !b.armed && !b.eof && ring.free_buffers() >= rearm_at {
                ring.push_recv(s.as_raw_fd(), i)?;
                b.armed = true;
                rep.rearms += 1;
            }
        }
        let idle = queues.iter().zip(&busy).all(|(q, b)| !b && q.is_empty());
        if idle && inb.iter().all(|s| s.eof) {
            ensure!(refs.all_free(), "buffers still referenced");
            return Ok(());
        }
        ensure!(ring.busy(), "stalled: nothing in flight");
    }
}

fn errno(res: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(-res)
}
