//! The fake peers and the traffic: a sender that streams data frames, a receiver that counts
//! them and records each stamped frame's one-way latency in an hdrhistogram, the saturation
//! run and the paced open-loop run.
//!
//! A routed pair is two fake Babel peers of the router under test: each announces its own /64
//! with one Update and then keeps the link alive with a Hello and an IHU every 250 ms, also
//! while it sends nothing (between paced rounds the other paths take their turns; hyphae drops
//! a peer that sends nothing for 1.5 s, stock one that sends no IHU for 43 s). The same bytes
//! go to a hyphae router and to a stock mycelium node.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use hyphae_wire::babel::{Hello, Ihu, Tlv, Update};
use hyphae_wire::data::DataHeader;
use hyphae_wire::deframer::{Deframer, Frame};
use hyphae_wire::identity::{PublicKey, SecretKey};
use hyphae_wire::{Interval, Metric, RouterId, SeqNo};
use serde_json::{Value, json};

use crate::procs::{Router, set_affinity};

/// Marks the frames that carry a send time.
const MAGIC: u64 = 0x6879_7068_6165_2121;
/// How often a fake peer sends Hello and IHU. Stock answers every Hello with an IHU; these
/// peers send theirs on their own clock instead, often enough for hyphae's default Hello
/// interval (300 ms: a peer is dead after 1.5 s without an IHU or any frame).
const KEEPALIVE: Duration = Duration::from_millis(250);
/// How long a write may block before the run fails (the hop stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a route through the router may take to appear.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(10);

/// One-way latency percentiles of a histogram, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Pcts {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

impl Pcts {
    /// p50, p99, p99.9 and max of a histogram in nanoseconds.
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        let us = |v: u64| v as f64 / 1000.0;
        Self {
            p50: us(h.value_at_quantile(0.5)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }

    pub(crate) fn json(&self) -> Value {
        json!({"p50": self.p50, "p99": self.p99, "p999": self.p999, "max": self.max})
    }
}

/// Quantiles at which latency curves are sampled.
const CURVE: [f64; 10] = [
    0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
];

/// (quantile, microseconds) at each of [`CURVE`]'s quantiles of a histogram in nanoseconds.
pub(crate) fn curve_of(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    CURVE
        .iter()
        .map(|q| (*q, h.value_at_quantile(*q) as f64 / 1000.0))
        .collect()
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Hello and IHU, as one write.
fn keepalive_frames(seqno: u16) -> Vec<u8> {
    let mut v = Vec::new();
    Tlv::Hello(Hello {
        flags: 0,
        seqno: SeqNo(seqno),
        interval: Interval::from_secs(20),
    })
    .encode_frame(&mut v);
    Tlv::Ihu(Ihu {
        rx_cost: Metric(1),
        interval: Interval::from_secs(60),
        address: None,
    })
    .encode_frame(&mut v);
    v
}

/// A peer's keepalive schedule.
#[derive(Debug)]
struct Keepalive {
    last: Instant,
    seqno: u16,
}

impl Keepalive {
    fn new() -> Self {
        Self {
            last: Instant::now(),
            seqno: 0,
        }
    }

    /// Hello and IHU when they are due.
    fn due(&mut self) -> Option<Vec<u8>> {
        if self.last.elapsed() < KEEPALIVE {
            return None;
        }
        self.last = Instant::now();
        self.seqno = self.seqno.wrapping_add(1);
        Some(keepalive_frames(self.seqno))
    }
}

struct Peer {
    key: PublicKey,
    stream: TcpStream,
}

/// Connects a fake peer to `port` (retrying for a few seconds: a node may open its API before
/// its peer listener) and announces the peer's /64.
fn announce(seed: u8, port: u16) -> Result<Peer> {
    let secret = SecretKey::from_bytes([seed; 32]);
    let key = secret.public_key();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(e).context(format!("connecting a fake peer to 127.0.0.1:{port}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    // Behave like a hyphae peer: a short unsent backlog in the kernel.
    hyphae_bench::sys::set_int_opt(
        &stream,
        libc::IPPROTO_TCP,
        libc::TCP_NOTSENT_LOWAT,
        128 * 1024,
    );
    let u = Update {
        flags: 0,
        interval: Interval::from_secs(300),
        seqno: SeqNo(0),
        metric: Metric(0),
        subnet: key.subnet(),
        router_id: RouterId::new(&key, 0, [seed; 6]),
    };
    let mut v = Vec::new();
    Tlv::Update(u).encode_frame(&mut v);
    stream.write_all(&v)?;
    Ok(Peer { key, stream })
}

/// The sender and the receiver, with a route between them through the router.
pub(crate) fn peers(router: &mut Router, sink_cpu: Option<usize>) -> Result<(Sender, Receiver)> {
    let tx = announce(1, router.port)?;
    let rx = announce(2, router.port)?;
    let hdr = DataHeader {
        hop_limit: 64,
        src: tx.key.address(),
        dst: rx.key.address(),
    };
    let mut sender = Sender::new(tx.stream, hdr, Some(Keepalive::new()));
    let receiver = Receiver::spawn(rx.stream, sink_cpu, true)?;
    // Send probes until one arrives: the router has learned both routes.
    let deadline = Instant::now() + ROUTE_TIMEOUT;
    while receiver.frames.load(Relaxed) == 0 {
        router.check()?;
        if Instant::now() > deadline {
            bail!(
                "no route through the {} router within {} s: no probe frame arrived",
                router.kind.name(),
                ROUTE_TIMEOUT.as_secs()
            );
        }
        sender.send_batch(&sender.batch(296, 1, 0))?;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((sender, receiver))
}

/// A sender and a receiver on one loopback TCP connection.
pub(crate) fn direct_pair(sink_cpu: Option<usize>) -> Result<(Sender, Receiver)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let a = TcpStream::connect(l.local_addr()?)?;
    let (b, _) = l.accept()?;
    raw_pair(a, b, sink_cpu)
}

/// A listener the plain relay forwards to, and the pair around the relay once it is up:
/// `connect` dials the relay and returns the sender and the receiver.
pub(crate) struct RelaySink {
    listener: TcpListener,
}

impl RelaySink {
    pub(crate) fn bind() -> Result<Self> {
        Ok(Self {
            listener: TcpListener::bind("127.0.0.1:0")?,
        })
    }

    pub(crate) fn port(&self) -> Result<u16> {
        Ok(self.listener.local_addr()?.port())
    }

    /// Dials the relay at `relay_port`, waits (with a deadline) for it to dial us.
    pub(crate) fn connect(
        self,
        relay_port: u16,
        sink_cpu: Option<usize>,
    ) -> Result<(Sender, Receiver)> {
        let a = TcpStream::connect(("127.0.0.1", relay_port))
            .with_context(|| format!("connecting to the plain relay on port {relay_port}"))?;
        self.listener.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let b = loop {
            match self.listener.accept() {
                Ok((b, _)) => break b,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        bail!("the plain relay did not connect to the sink within 10 s");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e.into()),
            }
        };
        b.set_nonblocking(false)?;
        raw_pair(a, b, sink_cpu)
    }
}

/// A sender on `a` and a receiver on `b`, for paths that do not route (direct and relayed).
fn raw_pair(a: TcpStream, b: TcpStream, sink_cpu: Option<usize>) -> Result<(Sender, Receiver)> {
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    a.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let hdr = DataHeader {
        hop_limit: 64,
        src: "4a9::1".parse()?,
        dst: "4a9::2".parse()?,
    };
    let tx = Sender::new(a, hdr, None);
    Ok((tx, Receiver::spawn(b, sink_cpu, false)?))
}

pub(crate) struct Sender {
    link: Arc<Mutex<SendLink>>,
    hdr: DataHeader,
    /// Tells the keepalive thread (routed pairs only) to end.
    stop: Arc<AtomicBool>,
}

/// The sending stream and its keepalive schedule, shared with the keepalive thread so that
/// Hello and IHU go out between whole writes, never inside one.
struct SendLink {
    stream: TcpStream,
    /// Routed pairs only.
    keepalive: Option<Keepalive>,
}

impl SendLink {
    /// Locks `link` (a panic in another holder leaves the stream as usable as before).
    fn lock(link: &Mutex<Self>) -> MutexGuard<'_, Self> {
        link.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.stream.write_all(b).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => anyhow::anyhow!(
                "a write to the path under test blocked for {} s: the hop stopped reading",
                WRITE_TIMEOUT.as_secs()
            ),
            _ => anyhow::Error::new(e).context("writing to the path under test"),
        })
    }

    /// Hello and IHU, if due.
    fn keep_alive(&mut self) -> Result<()> {
        match self.keepalive.as_mut().and_then(Keepalive::due) {
            Some(k) => self.write(&k),
            None => Ok(()),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

impl Sender {
    /// A sender on `stream`; with a keepalive schedule (a routed pair), a thread also sends
    /// Hello and IHU on it while the sender is idle.
    fn new(stream: TcpStream, hdr: DataHeader, keepalive: Option<Keepalive>) -> Self {
        let routed = keepalive.is_some();
        let link = Arc::new(Mutex::new(SendLink { stream, keepalive }));
        let stop = Arc::new(AtomicBool::new(false));
        if routed {
            let (link, stop) = (link.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    std::thread::sleep(KEEPALIVE / 5);
                    if SendLink::lock(&link).keep_alive().is_err() {
                        return;
                    }
                }
            });
        }
        Self { link, hdr, stop }
    }

    /// `n` frames of `frame_len` bytes on the wire, the first stamped with `stamp_ns`.
    fn batch(&self, frame_len: usize, n: usize, stamp_ns: u64) -> Vec<u8> {
        let body_len = frame_len - 40;
        let mut body = vec![0u8; body_len];
        let mut v = Vec::with_capacity(frame_len * n);
        for i in 0..n {
            body[..8].copy_from_slice(&(if i == 0 { MAGIC } else { 0 }).to_le_bytes());
            body[8..16].copy_from_slice(&stamp_ns.to_le_bytes());
            let _ = self.hdr.emit_frame(&body, &mut v);
        }
        v
    }

    /// Writes whole frames (and, before them, Hello and IHU when due).
    fn send_batch(&mut self, b: &[u8]) -> Result<()> {
        let mut link = SendLink::lock(&self.link);
        link.keep_alive()?;
        link.write(b)
    }
}

pub(crate) struct Receiver {
    frames: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    hist: Arc<Mutex<Histogram<u64>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    /// A thread (on `cpu` if given) that reads `stream`, counts data frames and records the
    /// latency of stamped ones; a `routed` receiver also sends Hello and IHU.
    fn spawn(mut stream: TcpStream, cpu: Option<usize>, routed: bool) -> Result<Self> {
        // A sink slower than the router would otherwise time its own autotuned receive backlog
        // (megabytes); a small buffer pushes that backlog back into the router's queue, whose
        // bound is what the saturation latency should show.
        hyphae_bench::sys::set_int_opt(&stream, libc::SOL_SOCKET, libc::SO_RCVBUF, 256 * 1024);
        stream.set_read_timeout(Some(Duration::from_millis(100)))?;
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        let frames = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let hist = Arc::new(Mutex::new(new_hist()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, b, h, s) = (frames.clone(), bytes.clone(), hist.clone(), stop.clone());
        let base = *BASE.get_or_init(Instant::now);
        let (pinned_tx, pinned) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = set_affinity(cpu).map_err(|e| e.to_string());
            let ok = r.is_ok();
            let _ = pinned_tx.send(r);
            if !ok {
                return;
            }
            let mut keepalive = routed.then(Keepalive::new);
            let mut buf = BytesMut::with_capacity(1 << 20);
            let mut d = Deframer::new();
            let mut chunk = vec![0u8; 1 << 18];
            while !s.load(Relaxed) {
                if let Some(k) = keepalive.as_mut().and_then(Keepalive::due) {
                    let _ = stream.write_all(&k);
                }
                let n = match stream.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(_) => continue,
                };
                buf.extend_from_slice(&chunk[..n]);
                let mut local_frames = 0;
                let mut local_bytes = 0;
                while let Ok(Some(fr)) = d.next_frame(&mut buf) {
                    let Frame::Data(df) = fr else { continue };
                    local_frames += 1;
                    local_bytes += df.as_bytes().len() as u64;
                    let body = df.body();
                    if body.len() >= 16 && body[..8] == MAGIC.to_le_bytes() {
                        let sent = u64::from_le_bytes(body[8..16].try_into().unwrap_or_default());
                        let now = base.elapsed().as_nanos() as u64;
                        if let Ok(mut hist) = h.lock() {
                            let _ = hist.record(now.saturating_sub(sent).max(1));
                        }
                    }
                }
                f.fetch_add(local_frames, Relaxed);
                b.fetch_add(local_bytes, Relaxed);
            }
        });
        match pinned.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("pinning a sink: {e}"),
            Err(_) => bail!("a sink thread did not start within 5 s"),
        }
        Ok(Self {
            frames,
            bytes,
            hist,
            stop,
        })
    }

    fn reset(&self) {
        if let Ok(mut h) = self.hist.lock() {
            h.reset();
        }
    }

    /// A copy of what was recorded since the last reset.
    fn recorded(&self) -> Histogram<u64> {
        self.hist
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| new_hist())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// One saturation run: what arrived and what the router spent.
#[derive(Clone, Debug)]
pub(crate) struct SatRun {
    pub(crate) frame_len: usize,
    pub(crate) seconds: f64,
    pub(crate) frames: u64,
    pub(crate) frames_per_s: f64,
    pub(crate) gbit_per_s: f64,
    /// The router's CPU seconds in the measured window (`None`: no router on the path).
    pub(crate) router_cpu_s: Option<f64>,
    /// vCPU time the host took during the run.
    pub(crate) steal_ms: f64,
    pub(crate) latency: Pcts,
    pub(crate) curve: Vec<(f64, f64)>,
}

impl SatRun {
    /// Frames delivered per CPU-second of the router (`None` without a router, or when the
    /// run was too short for the kernel to account any CPU time to it).
    pub(crate) fn frames_per_cpu_s(&self) -> Option<f64> {
        self.router_cpu_s
            .filter(|c| *c > 0.0)
            .map(|c| self.frames as f64 / c)
    }

    pub(crate) fn json(&self, subject: &str) -> Value {
        json!({
            "subject": subject, "frame_len": self.frame_len, "seconds": self.seconds,
            "frames": self.frames, "frames_per_s": self.frames_per_s, "gbit_per_s": self.gbit_per_s,
            "router_cpu_s": self.router_cpu_s, "frames_per_cpu_s": self.frames_per_cpu_s(),
            "steal_ms": self.steal_ms,
            "p50_us": self.latency.p50, "p99_us": self.latency.p99,
            "p999_us": self.latency.p999, "max_us": self.latency.max, "curve": self.curve,
        })
    }
}

/// Streams `frame_len`-byte frames as fast as `tx` takes them for `secs`, after `warmup`
/// seconds of the same, counting `router`'s CPU time when there is one.
pub(crate) fn saturate(
    tx: &mut Sender,
    rx: &Receiver,
    frame_len: usize,
    secs: f64,
    warmup: f64,
    mut router: Option<&mut Router>,
) -> Result<SatRun> {
    let per_write = (256 * 1024 / frame_len).max(1);
    let mut template = tx.batch(frame_len, per_write, 0);
    let warm = Instant::now();
    while warm.elapsed().as_secs_f64() < warmup {
        template[40 + 8..40 + 16].copy_from_slice(&now_ns().to_le_bytes());
        tx.send_batch(&template)?;
    }
    std::thread::sleep(Duration::from_millis(100));
    rx.reset();
    let cpu = |r: &Option<&mut Router>| r.as_ref().map(|r| r.cpu_seconds());
    let (f0, b0, c0, s0) = (
        rx.frames.load(Relaxed),
        rx.bytes.load(Relaxed),
        cpu(&router),
        crate::procs::steal_ms(),
    );
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < secs {
        // Stamp the first frame of each write with the time it is handed to the kernel.
        template[40 + 8..40 + 16].copy_from_slice(&now_ns().to_le_bytes());
        tx.send_batch(&template)?;
    }
    let el = t0.elapsed().as_secs_f64();
    let (f1, b1, c1, s1) = (
        rx.frames.load(Relaxed),
        rx.bytes.load(Relaxed),
        cpu(&router),
        crate::procs::steal_ms(),
    );
    let h = rx.recorded();
    if let Some(r) = router.as_mut() {
        r.check()?;
    }
    if f1 == f0 {
        bail!("no {frame_len} B frame arrived in {el:.1} s of saturation");
    }
    // Drain what is still queued before the next run.
    std::thread::sleep(Duration::from_millis(300));
    Ok(SatRun {
        frame_len,
        seconds: el,
        frames: f1 - f0,
        frames_per_s: (f1 - f0) as f64 / el,
        gbit_per_s: (b1 - b0) as f64 * 8.0 / el / 1e9,
        router_cpu_s: c1.zip(c0).map(|(c1, c0)| c1 - c0),
        steal_ms: s1 - s0,
        latency: Pcts::of(&h),
        curve: curve_of(&h),
    })
}

/// Paced open-loop latency over one path, accumulated over rounds. Open loop: frame `i` is due
/// at `t0 + i / rate`; each carries its due time, so lateness of the generator counts against
/// the path, never hides (no coordinated omission).
pub(crate) struct Paced {
    pub(crate) name: &'static str,
    /// Each round's percentiles (`None`: nothing arrived).
    pub(crate) per_round: Vec<Option<Pcts>>,
    /// Frames that had not arrived a second after their round ended.
    pub(crate) lost: u64,
    pub(crate) rate: u64,
    pub(crate) hist: Histogram<u64>,
    frames: u64,
    secs: f64,
}

impl Paced {
    pub(crate) fn new(name: &'static str, rate: u64) -> Self {
        Self {
            name,
            per_round: Vec::new(),
            lost: 0,
            rate,
            hist: new_hist(),
            frames: 0,
            secs: 0.0,
        }
    }

    /// One round: `secs` of frames sent at their scheduled times, each stamped with it.
    pub(crate) fn round(
        &mut self,
        tx: &mut Sender,
        rx: &Receiver,
        frame_len: usize,
        secs: f64,
    ) -> Result<()> {
        std::thread::sleep(Duration::from_millis(100));
        rx.reset();
        let f0 = rx.frames.load(Relaxed);
        let interval_ns = 1_000_000_000 / self.rate.max(1);
        let total = (secs * self.rate as f64) as u64;
        let start = now_ns() + 1_000_000;
        let mut frame = tx.batch(frame_len, 1, 0);
        let mut i = 0u64;
        while i < total {
            let due = start + i * interval_ns;
            let now = now_ns();
            if due > now {
                std::thread::sleep(Duration::from_nanos(due - now));
            }
            // Send every frame that is due by now.
            let now = now_ns();
            while i < total && start + i * interval_ns <= now {
                frame[40 + 8..40 + 16].copy_from_slice(&(start + i * interval_ns).to_le_bytes());
                tx.send_batch(&frame)?;
                i += 1;
            }
        }
        // Wait for the round's last frames: a late frame counts at its lateness; one still
        // missing after a second is reported as lost.
        let deadline = Instant::now() + Duration::from_secs(1);
        while rx.frames.load(Relaxed) - f0 < total && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let received = rx.frames.load(Relaxed) - f0;
        self.lost += total.saturating_sub(received);
        let h = rx.recorded();
        self.hist += &h;
        self.per_round.push((received > 0).then(|| Pcts::of(&h)));
        self.frames += received;
        self.secs += secs;
        Ok(())
    }

    /// Delivered frames per second over all rounds.
    pub(crate) fn frames_per_s(&self) -> f64 {
        self.frames as f64 / self.secs.max(1e-9)
    }
}
