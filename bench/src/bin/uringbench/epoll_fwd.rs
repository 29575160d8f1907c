//! Variant (d): loop (c) on epoll instead of io_uring, to tell what io_uring itself buys from
//! what the buffer handling buys. Same buffer pool size, same frame assembly
//! ([`frames`](super::frames)): the loop picks a free buffer and `recv`s into it; frames are
//! sent from where they landed with one `writev` of up to 1024 chunks per output per turn.
//!
//! Each turn is one `epoll_wait` (not blocking while there is work to do), then reads (at most
//! [`READS_PER_TURN`] buffers per input), then writes. Registrations are edge-triggered: the
//! loop remembers which sockets are readable or writable until a call says otherwise. A read
//! shorter than the buffer means the socket was drained, which saves the `EAGAIN` call (unless
//! the peer's FIN may be waiting behind it).

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use anyhow::{Result, bail, ensure};

use super::frames::{Queue, Refs, Stream, parse};
use super::sys::{Chunk, Epoll};
use super::uring_fwd::Report;

/// Most buffers one input fills per turn, so one busy input cannot take the whole pool.
const READS_PER_TURN: usize = 16;
/// Token bit of outputs.
const OUT: u64 = 1 << 32;

/// A pool of fixed buffers, pre-faulted.
#[derive(Debug)]
struct Pool {
    mem: Vec<u8>,
    size: usize,
    free: Vec<u16>,
}

impl Pool {
    fn new(bufs: u16, size: usize) -> Self {
        Self {
            mem: vec![0x5a; usize::from(bufs) * size],
            size,
            free: (0..bufs).rev().collect(),
        }
    }

    fn buf_mut(&mut self, bid: u16) -> &mut [u8] {
        let a = usize::from(bid) * self.size;
        &mut self.mem[a..a + self.size]
    }

    fn chunk(&self, c: &Chunk) -> &[u8] {
        let a = usize::from(c.bid) * self.size + c.off as usize;
        &self.mem[a..a + c.len as usize]
    }
}

/// Forwards from `ins` to `outs` until every input has ended and every output is written;
/// `turns` follows the `epoll_wait` count as it goes.
pub(super) fn run(
    ins: Vec<TcpStream>,
    outs: Vec<TcpStream>,
    bufs: u16,
    buf_size: usize,
    turns: &AtomicU64,
) -> Result<Report> {
    let mut ep = Epoll::new(ins.len() + outs.len())?;
    for (i, s) in ins.iter().enumerate() {
        s.set_nonblocking(true)?;
        let ev = libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET;
        ep.add(s.as_raw_fd(), ev as u32, i as u64)?;
    }
    for (j, s) in outs.iter().enumerate() {
        s.set_nonblocking(true)?;
        let ev = libc::EPOLLOUT | libc::EPOLLET;
        ep.add(s.as_raw_fd(), ev as u32, OUT | j as u64)?;
    }
    let mut rep = Report {
        setup: "epoll, edge-triggered",
        ..Report::default()
    };
    let (n, m) = (ins.len(), outs.len());
    let mut pool = Pool::new(bufs, buf_size);
    let mut refs = Refs::new(usize::from(bufs));
    let mut streams: Vec<Stream> = (0..n).map(|_| Stream::new()).collect();
    let mut queues: Vec<Queue> = (0..m).map(|_| Queue::default()).collect();
    let (mut readable, mut hup, mut eof) = (vec![true; n], vec![false; n], vec![false; n]);
    let mut writable = vec![true; m];
    let mut events = Vec::with_capacity(n + m);
    let mut pokes = Vec::new();
    loop {
        let can_read = !pool.free.is_empty() && (0..n).any(|i| readable[i] && !eof[i]);
        let can_write = (0..m).any(|j| writable[j] && !queues[j].is_empty());
        ep.wait(if can_read || can_write { 0 } else { -1 }, &mut events)?;
        rep.turns += 1;
        turns.store(rep.turns, Relaxed);
        rep.events += events.len() as u64;
        for (token, ev) in events.drain(..) {
            let i = (token & 0xffff_ffff) as usize;
            if token & OUT != 0 {
                writable[i] = true;
            } else {
                readable[i] = true;
                let end = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
                hup[i] |= ev & end != 0;
            }
        }
        for (i, s) in ins.iter().enumerate() {
            let mut k = 0;
            while readable[i] && !eof[i] && k < READS_PER_TURN {
                let Some(bid) = pool.free.pop() else {
                    rep.starved += 1;
                    break;
                };
                let mut sock = s;
                let got = sock.read(pool.buf_mut(bid));
                match got {
                    Ok(0) => {
                        pool.free.push(bid);
                        ensure!(streams[i].at_boundary(), "input {i} ended inside a frame");
                        eof[i] = true;
                    }
                    Ok(len) => {
                        rep.recvs += 1;
                        k += 1;
                        refs.hold(bid)?;
                        let data = &mut pool.buf_mut(bid)[..len];
                        rep.split_headers += parse(
                            &mut streams[i],
                            bid,
                            data,
                            &mut queues,
                            &mut refs,
                            &mut pokes,
                        )?;
                        for p in pokes.drain(..) {
                            pool.buf_mut(p.bid)[p.off as usize] = p.value;
                        }
                        if refs.release(bid) {
                            pool.free.push(bid);
                        }
                        if len < buf_size && !hup[i] {
                            readable[i] = false;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        pool.free.push(bid);
                        rep.eagain += 1;
                        readable[i] = false;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => pool.free.push(bid),
                    Err(e) => bail!("receive on input {i}: {e}"),
                }
            }
        }
        for (j, s) in outs.iter().enumerate() {
            while writable[j] && !queues[j].is_empty() {
                let chunks = queues[j].start_send();
                rep.sends += 1;
                rep.iovecs += chunks.len() as u64;
                let slices: Vec<IoSlice<'_>> =
                    chunks.iter().map(|c| IoSlice::new(pool.chunk(c))).collect();
                let mut sock = s;
                let (sent, blocked) = match sock.write_vectored(&slices) {
                    Ok(0) => bail!("send on output {j}: wrote nothing"),
                    Ok(len) => (len, false),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => (0, true),
                    Err(e) if e.kind() == ErrorKind::Interrupted => (0, false),
                    Err(e) => bail!("send on output {j}: {e}"),
                };
                drop(slices);
                let free = &mut pool.free;
                let partial = queues[j].finish_send(sent, &mut refs, |b| free.push(b));
                // A short write means the socket is full: wait for its next EPOLLOUT edge.
                if blocked || (partial && sent > 0) {
                    rep.partial_sends += u64::from(sent > 0);
                    writable[j] = false;
                }
            }
        }
        if eof.iter().all(|&e| e) && queues.iter().all(Queue::is_empty) {
            ensure!(refs.all_free(), "buffers still referenced");
            for s in &outs {
                s.shutdown(Shutdown::Write)?;
            }
            return Ok(rep);
        }
    }
}
