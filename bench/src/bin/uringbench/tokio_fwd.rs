//! Variant (a): the router's link code (`router/src/daemon/link.rs`, `peer.rs`,
//! `forward.rs`) reduced to forwarding, on one current-thread runtime.
//!
//! Per inbound connection a reader task reads into the spare capacity of a `BytesMut` (256 KiB
//! reserved per read), splits off frames with the router's deframer, decrements the hop limit
//! in place, rejoins consecutive frames for one output into one run (no copy) and queues the
//! runs on that output's channel, then yields. Per outbound connection a writer task takes up
//! to 512 runs and writes them with vectored writes. The router drops frames when a queue is
//! over budget; here the reader waits instead, so every frame is delivered and counted.
//!
//! It runs on tokio (epoll, `read_buf`, `write_vectored`). Variant (b), the same on tokio-uring
//! 0.5 (the router's former uring driver), was removed with that driver; its last figures are in
//! `bench/README.md`.

use std::cell::Cell;
use std::io::{self, IoSlice};
use std::net::TcpStream;
use std::rc::Rc;

use anyhow::{Result, bail};
use bytes::{Buf, Bytes, BytesMut};
use hyphae_wire::deframer::{Deframer, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio::task::spawn_local;

use super::load::route;

/// Receive-buffer growth step (`link.rs`).
const READ_CHUNK: usize = 256 * 1024;
/// Most runs moved from a queue into one vectored write (`peer.rs`).
const WRITE_BATCH: usize = 512;
/// Longest run of frames queued as one slice (`forward.rs`).
const MAX_RUN: usize = 64 * 1024;
/// Most slices per write system call.
const MAX_IOV: usize = 1024;

/// (a): plain tokio, current thread, epoll.
pub(super) fn run_epoll(ins: Vec<TcpStream>, outs: Vec<TcpStream>, limit: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&rt, async move {
        let into = |s: TcpStream| -> io::Result<tokio::net::TcpStream> {
            s.set_nonblocking(true)?;
            tokio::net::TcpStream::from_std(s)
        };
        let readers = ins
            .into_iter()
            .map(|s| into(s).map(PortableRead))
            .collect::<io::Result<Vec<_>>>()?;
        let writers = outs
            .into_iter()
            .map(|s| into(s).map(PortableWrite))
            .collect::<io::Result<Vec<_>>>()?;
        forward(readers, writers, limit).await
    })
}

/// The read half of a link (`link.rs`).
trait LinkRead {
    /// Reads into `buf`'s spare capacity (at least [`READ_CHUNK`] reserved first).
    async fn read(&mut self, buf: BytesMut) -> (io::Result<usize>, BytesMut);
}

/// The write half of a link (`link.rs`).
trait LinkWrite {
    /// Writes every byte of `batch`, in order; gives the batch back empty.
    async fn write_batch(&mut self, batch: Vec<Bytes>) -> (io::Result<()>, Vec<Bytes>);
    /// Ends the stream.
    async fn close(&mut self) -> io::Result<()>;
}

/// One output's queue: bytes queued, and a wake-up for readers waiting for it to drain.
#[derive(Debug, Default)]
struct Backlog {
    queued: Cell<usize>,
    drained: Notify,
}

/// What the readers share: the outputs' channels and backlogs.
#[derive(Debug)]
struct Outputs {
    tx: Vec<mpsc::UnboundedSender<Bytes>>,
    backlog: Vec<Rc<Backlog>>,
}

/// Runs the readers and writers until every input has ended and every output is written.
async fn forward<R, W>(readers: Vec<R>, writers: Vec<W>, limit: usize) -> Result<()>
where
    R: LinkRead + 'static,
    W: LinkWrite + 'static,
{
    let mut outs = Outputs {
        tx: Vec::new(),
        backlog: Vec::new(),
    };
    let mut wtasks = Vec::new();
    for w in writers {
        let (tx, rx) = mpsc::unbounded_channel();
        let b = Rc::new(Backlog::default());
        wtasks.push(spawn_local(write_loop(w, rx, b.clone())));
        outs.tx.push(tx);
        outs.backlog.push(b);
    }
    let outs = Rc::new(outs);
    let rtasks: Vec<_> = readers
        .into_iter()
        .map(|r| spawn_local(read_loop(r, outs.clone(), limit)))
        .collect();
    // The channels close when the last reader is done with them.
    drop(outs);
    for t in rtasks {
        t.await??;
    }
    for t in wtasks {
        t.await??;
    }
    Ok(())
}

async fn read_loop<R: LinkRead>(mut r: R, outs: Rc<Outputs>, limit: usize) -> Result<()> {
    let mut buf = BytesMut::with_capacity(2 * READ_CHUNK);
    let mut deframer = Deframer::new();
    loop {
        let (res, b) = r.read(buf).await;
        buf = b;
        if res? == 0 {
            if !buf.is_empty() {
                bail!("input ended inside a frame");
            }
            return Ok(());
        }
        handle_read(&mut deframer, &mut buf, &outs)?;
        for b in &outs.backlog {
            while b.queued.get() > limit {
                b.drained.notified().await;
            }
        }
        // As the router: let the writers drain what this read queued before reading more.
        tokio::task::yield_now().await;
    }
}

/// Forwards every whole frame at the front of `buf` (`Forwarder::handle_frames`, data path).
fn handle_read(deframer: &mut Deframer, buf: &mut BytesMut, outs: &Outputs) -> Result<()> {
    let m = outs.tx.len();
    let mut staged: Option<(usize, BytesMut)> = None;
    loop {
        let mut f = match deframer.next_frame(buf) {
            Ok(Some(Frame::Data(f))) => f,
            Ok(Some(_)) => bail!("unexpected control frame"),
            Ok(None) => break,
            Err(e) => bail!("corrupt framing: {e}"),
        };
        let hop = f.hop_limit();
        if hop < 2 {
            bail!("hop limit {hop}");
        }
        f.set_hop_limit(hop - 1);
        let out = route(f.dst().octets()[15], m);
        let bytes = f.into_inner();
        match &mut staged {
            Some((o, run))
                if *o == out && run.len() + bytes.len() <= MAX_RUN && adjacent(run, &bytes) =>
            {
                run.unsplit(bytes);
            }
            _ => {
                if let Some((o, run)) = staged.replace((out, bytes)) {
                    queue(outs, o, run.freeze());
                }
            }
        }
    }
    if let Some((o, run)) = staged {
        queue(outs, o, run.freeze());
    }
    Ok(())
}

fn queue(outs: &Outputs, o: usize, run: Bytes) {
    let b = &outs.backlog[o];
    b.queued.set(b.queued.get() + run.len());
    // The writer lives as long as the channel: a send fails only after a write error, which
    // its task reports.
    let _ = outs.tx[o].send(run);
}

/// Whether `b` starts where `a` ends in memory (so `unsplit` joins them without copying).
fn adjacent(a: &BytesMut, b: &BytesMut) -> bool {
    (a.as_ptr() as usize).wrapping_add(a.len()) == b.as_ptr() as usize
}

async fn write_loop<W: LinkWrite>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    backlog: Rc<Backlog>,
) -> Result<()> {
    let mut runs = Vec::with_capacity(WRITE_BATCH);
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut runs, WRITE_BATCH).await > 0 {
        let bytes: usize = runs.iter().map(Bytes::len).sum();
        batch.append(&mut runs);
        let (r, b) = w.write_batch(std::mem::take(&mut batch)).await;
        batch = b;
        batch.clear();
        r?;
        backlog.queued.set(backlog.queued.get() - bytes);
        backlog.drained.notify_waiters();
    }
    w.close().await?;
    Ok(())
}

/// Drops the first `n` written bytes from the front of `batch` (`link.rs`).
fn advance_batch(batch: &mut Vec<Bytes>, mut n: usize) {
    let mut done = 0;
    for b in batch.iter_mut() {
        if n >= b.len() {
            n -= b.len();
            done += 1;
        } else {
            b.advance(n);
            break;
        }
    }
    batch.drain(..done);
}

struct PortableRead(tokio::net::TcpStream);
struct PortableWrite(tokio::net::TcpStream);

impl LinkRead for PortableRead {
    async fn read(&mut self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        buf.reserve(READ_CHUNK);
        let r = self.0.read_buf(&mut buf).await;
        (r, buf)
    }
}

impl LinkWrite for PortableWrite {
    async fn write_batch(&mut self, mut batch: Vec<Bytes>) -> (io::Result<()>, Vec<Bytes>) {
        while !batch.is_empty() {
            let slices: Vec<IoSlice<'_>> = batch
                .iter()
                .take(MAX_IOV)
                .map(|b| IoSlice::new(b))
                .collect();
            let n = match self.0.write_vectored(&slices).await {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), batch),
                Ok(n) => n,
                Err(e) => return (Err(e), batch),
            };
            drop(slices);
            advance_batch(&mut batch, n);
        }
        (Ok(()), batch)
    }

    async fn close(&mut self) -> io::Result<()> {
        self.0.shutdown().await
    }
}
