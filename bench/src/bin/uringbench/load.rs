//! The load around the forwarder: N generator threads writing data frames into its inbound
//! connections and M sink threads reading and checking what leaves its outbound ones, all
//! pinned to the load vCPU.
//!
//! Frames are real hyphae data frames (4-byte outer header, 36-byte data header, body), so the
//! forwarder finds their boundaries from the length field as the router's deframer does. The
//! destination address's last octet names the output; the body starts with the generator's
//! index (u32) and a sequence number per (generator, output) (u64), so every sink checks that
//! each frame arrives whole, once, in order, on the right output and with its hop limit
//! decremented.

use std::io::{Read, Write};
use std::net::{Ipv6Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hyphae_wire::data::{DATA_OVERHEAD, DataHeader};
use hyphae_wire::packet::{PROTOCOL_VERSION, PacketType};

use super::sys;

/// Whole-frame header: outer header and data header.
pub(super) const HEADER: usize = DATA_OVERHEAD;
/// Offset of the hop limit in a frame.
pub(super) const HOP_AT: usize = 7;
/// Offset of the destination address's last octet in a frame.
pub(super) const DST_LAST_AT: usize = 39;
/// Hop limit the generators send.
const HOP: u8 = 64;
/// Bytes per generator write and per sink read.
const CHUNK: usize = 256 * 1024;
/// Body bytes the check needs (generator index and sequence number).
pub(super) const MIN_BODY: usize = 12;

/// The output a frame goes to: its destination's last octet, modulo the outputs. Every variant
/// routes with this.
pub(super) fn route(dst_last: u8, outputs: usize) -> usize {
    usize::from(dst_last) % outputs
}

/// The connections of one run, made over loopback before the threads start.
#[derive(Debug)]
pub(super) struct Wiring {
    /// Generator ends of the inbound connections.
    pub(super) gen_ends: Vec<TcpStream>,
    /// Forwarder ends of the inbound connections.
    pub(super) fwd_in: Vec<TcpStream>,
    /// Forwarder ends of the outbound connections.
    pub(super) fwd_out: Vec<TcpStream>,
    /// Sink ends of the outbound connections.
    pub(super) sink_ends: Vec<TcpStream>,
}

/// Connects `n` inbound and `m` outbound connections. The forwarder's sockets get what the
/// router sets on a link: `TCP_NODELAY`, and `TCP_NOTSENT_LOWAT` unless `lowat` is 0.
pub(super) fn wire(n: usize, m: usize, lowat: u32) -> Result<Wiring> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    // One at a time, so accept order is connect order.
    let pair = || -> Result<(TcpStream, TcpStream)> {
        let c = TcpStream::connect(addr)?;
        let (a, _) = l.accept()?;
        Ok((c, a))
    };
    let mut w = Wiring {
        gen_ends: Vec::new(),
        fwd_in: Vec::new(),
        fwd_out: Vec::new(),
        sink_ends: Vec::new(),
    };
    for _ in 0..n {
        let (g, f) = pair()?;
        w.gen_ends.push(g);
        w.fwd_in.push(f);
    }
    for _ in 0..m {
        let (f, s) = pair()?;
        w.fwd_out.push(f);
        w.sink_ends.push(s);
    }
    for s in w.fwd_in.iter().chain(&w.fwd_out) {
        s.set_nodelay(true)?;
        if lowat > 0 {
            sys::set_notsent_lowat(s.as_raw_fd(), lowat)?;
        }
    }
    Ok(w)
}

/// The running generators and sinks of one run.
#[derive(Debug)]
pub(super) struct Load {
    stop: Arc<AtomicBool>,
    /// Bytes the sinks have read so far.
    pub(super) delivered: Arc<AtomicU64>,
    gens: Vec<JoinHandle<Result<u64>>>,
    sinks: Vec<JoinHandle<Result<u64>>>,
}

impl Load {
    /// Starts one sink per outbound and one generator per inbound connection, pinned to `cpu`.
    /// Generator `i` sends `run` frames to one output, then `run` to the next, and so on; all
    /// together `rate` frames/s if given, else as fast as they can.
    pub(super) fn start(
        gen_ends: Vec<TcpStream>,
        sink_ends: Vec<TcpStream>,
        frame_len: usize,
        run: usize,
        rate: Option<f64>,
        cpu: usize,
    ) -> Result<Self> {
        let (n, m) = (gen_ends.len(), sink_ends.len());
        let stop = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(AtomicU64::new(0));
        let spawn = |name: String, f: Box<dyn FnOnce() -> Result<u64> + Send>| {
            std::thread::Builder::new().name(name).spawn(move || {
                sys::pin_to_cpu(cpu).context("pinning")?;
                f()
            })
        };
        let mut sinks = Vec::new();
        for (j, s) in sink_ends.into_iter().enumerate() {
            let d = delivered.clone();
            let f = Box::new(move || sink(s, j, n, m, frame_len, &d));
            sinks.push(spawn(format!("sink{j}"), f)?);
        }
        let mut gens = Vec::new();
        for (i, s) in gen_ends.into_iter().enumerate() {
            let st = stop.clone();
            let rate = rate.map(|r| r / n as f64);
            let f = Box::new(move || generate(s, i, m, frame_len, run, rate, &st));
            gens.push(spawn(format!("gen{i}"), f)?);
        }
        Ok(Self {
            stop,
            delivered,
            gens,
            sinks,
        })
    }

    /// Stops the generators (each finishes its write and closes) and returns the frames they
    /// sent.
    pub(super) fn stop_generators(&mut self) -> Result<u64> {
        self.stop.store(true, Relaxed);
        let mut sent = 0;
        for g in self.gens.drain(..) {
            sent += g
                .join()
                .map_err(|_| anyhow::anyhow!("generator panicked"))??;
        }
        Ok(sent)
    }

    /// Waits for the sinks to reach end of stream; returns the frames they checked.
    pub(super) fn join_sinks(&mut self) -> Result<u64> {
        let mut got = 0;
        for s in self.sinks.drain(..) {
            got += s.join().map_err(|_| anyhow::anyhow!("sink panicked"))??;
        }
        Ok(got)
    }
}

/// Generator `i`: writes batches of frames (up to [`CHUNK`] bytes; at `rate` frames/s, all
/// frames due every half millisecond) until told to stop, then closes.
fn generate(
    mut s: TcpStream,
    i: usize,
    m: usize,
    frame_len: usize,
    run: usize,
    rate: Option<f64>,
    stop: &AtomicBool,
) -> Result<u64> {
    let per = (CHUNK / frame_len).max(1);
    let hdr = DataHeader {
        hop_limit: HOP,
        src: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, i as u16),
        dst: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 2, 0),
    };
    let body = vec![0u8; frame_len - HEADER];
    let mut buf = Vec::with_capacity(per * frame_len);
    for _ in 0..per {
        hdr.emit_frame(&body, &mut buf)?;
    }
    let mut seq = vec![0u64; m];
    let mut sent = 0u64;
    let start = Instant::now();
    // Paced: frames not sent within 2 ms of being due are skipped, not sent in a burst later
    // (a stall must not raise the rate that follows it).
    let mut skipped = 0u64;
    while !stop.load(Relaxed) {
        let mut count = per;
        if let Some(r) = rate {
            let mut due = (start.elapsed().as_secs_f64() * r) as u64 - skipped;
            let lag = (r * 0.002) as u64 + 1;
            if due > sent + lag {
                skipped += due - sent - lag;
                due = sent + lag;
            }
            if due <= sent {
                std::thread::sleep(Duration::from_micros(500));
                continue;
            }
            count = count.min((due - sent) as usize);
        }
        let batch = &mut buf[..count * frame_len];
        for (k, f) in batch.chunks_exact_mut(frame_len).enumerate() {
            let g = sent as usize + k;
            let j = (i + g / run) % m;
            f[DST_LAST_AT] = j as u8;
            f[HEADER..HEADER + 4].copy_from_slice(&(i as u32).to_le_bytes());
            f[HEADER + 4..HEADER + 12].copy_from_slice(&seq[j].to_le_bytes());
            seq[j] += 1;
        }
        s.write_all(batch)?;
        sent += count as u64;
    }
    s.shutdown(Shutdown::Write)?;
    Ok(sent)
}

/// Sink `j`: reads until end of stream, counting bytes into `delivered` and checking every
/// frame.
fn sink(
    mut s: TcpStream,
    j: usize,
    n: usize,
    m: usize,
    frame_len: usize,
    delivered: &AtomicU64,
) -> Result<u64> {
    let mut buf = vec![0u8; CHUNK + frame_len];
    let mut have = 0;
    let mut expect = vec![0u64; n];
    let mut frames = 0u64;
    let body_len = (frame_len - HEADER) as u16;
    loop {
        let r = s.read(&mut buf[have..])?;
        if r == 0 {
            break;
        }
        delivered.fetch_add(r as u64, Relaxed);
        have += r;
        let whole = have / frame_len * frame_len;
        for f in buf[..whole].chunks_exact(frame_len) {
            let ok = f[0] == PROTOCOL_VERSION
                && f[1] == PacketType::DATA.0
                && u16::from_be_bytes([f[5], f[6]]) == body_len
                && f[HOP_AT] == HOP - 1
                && route(f[DST_LAST_AT], m) == j;
            let g = u32::from_le_bytes([f[40], f[41], f[42], f[43]]) as usize;
            let mut sq = [0u8; 8];
            sq.copy_from_slice(&f[44..52]);
            let sq = u64::from_le_bytes(sq);
            ensure!(
                ok && g < n && sq == expect[g],
                "sink {j}: frame {frames} is wrong (generator {g}, sequence {sq})"
            );
            expect[g] += 1;
            frames += 1;
        }
        buf.copy_within(whole..have, 0);
        have -= whole;
    }
    if have != 0 {
        bail!("sink {j}: stream ended inside a frame");
    }
    Ok(frames)
}
