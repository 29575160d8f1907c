//! Transit load generator for `hyphae-router`.
//!
//! Starts a router (a child process), connects two fake peers over TCP that each announce their
//! own /64, and streams data frames from one through the router to the other, which counts them
//! and records one-way latency (from the frame's intended send time) in an hdrhistogram.
//!
//! ```text
//! cargo build --release -p hyphae-router -p hyphae-bench
//! target/release/transit --driver uring
//! ```
//!
//! Reports, for 296-byte and 1340-byte frames at saturation: delivered frames/s, Gbit/s, the
//! router's CPU seconds, and latency percentiles (queues must stay bounded), next to the same
//! saturation straight over one TCP connection (the generator's own floor on this machine);
//! then, paced open-loop at a fixed rate: latency percentiles through the router and over a
//! direct TCP connection, whose difference is the latency the hop adds.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use clap::Parser;
use hdrhistogram::Histogram;
use hyphae_bench::{free_port, router_args};
use hyphae_wire::babel::{Tlv, Update};
use hyphae_wire::data::DataHeader;
use hyphae_wire::deframer::{Deframer, Frame};
use hyphae_wire::identity::{PublicKey, SecretKey};
use hyphae_wire::{Interval, Metric, RouterId, SeqNo};

#[derive(Parser, Debug)]
struct Args {
    /// The router binary (default: `hyphae-router` next to this one).
    #[arg(long)]
    router: Option<std::path::PathBuf>,
    /// Router I/O driver: uring or portable.
    #[arg(long, default_value = "uring")]
    driver: String,
    /// Router data-plane workers.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Seconds per saturation run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Paced rate, frames/s.
    #[arg(long, default_value_t = 50_000)]
    rate: u64,
    /// Seconds of the paced run, per path.
    #[arg(long, default_value_t = 6.0)]
    paced_seconds: f64,
    /// Rounds the paced run is split into, alternating the router and the direct path.
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Passed to the router as --tcp-rcvbuf (bytes).
    #[arg(long)]
    router_rcvbuf: Option<usize>,
    /// CPU to pin the router to; the generator and the sink are then pinned to the others
    /// (`../shared/PERF-NOTES.md` 6.1: router data plane on one vCPU, load on the other).
    #[arg(long)]
    router_cpu: Option<usize>,
}

const MAGIC: u64 = 0x6879_7068_6165_2121;

fn main() -> Result<()> {
    let args = Args::parse();
    set_timer_slack();
    if let Some(cpu) = args.router_cpu {
        pin_to_all_but(cpu)?;
    }
    let mut results = Vec::new();

    let router = Router::start(&args)?;
    let (mut tx, rx) = peers(&router)?;
    for frame_len in [296usize, 1340] {
        let r = saturate(&mut tx, &rx, frame_len, args.seconds, Some(&router))?;
        r.print();
        results.push(r);
    }
    let (mut dtx, drx) = direct_pair()?;
    // The generator's own floor: the same saturation straight over one TCP connection.
    let mut direct = Vec::new();
    for frame_len in [296usize, 1340] {
        let r = saturate(&mut dtx, &drx, frame_len, args.seconds, None)?;
        r.print();
        direct.push(r);
    }
    // Paced: short rounds through the router and straight over TCP, alternating, merged; both
    // paths then see the same drift of a shared machine.
    let per_round = args.paced_seconds / args.rounds.max(1) as f64;
    let mut hop = Paced::new("through router", args.rate);
    let mut base_line = Paced::new("direct TCP (baseline)", args.rate);
    for round in 0..args.rounds.max(1) {
        if round % 2 == 0 {
            hop.round(&mut tx, &rx, 296, per_round)?;
            base_line.round(&mut dtx, &drx, 296, per_round)?;
        } else {
            base_line.round(&mut dtx, &drx, 296, per_round)?;
            hop.round(&mut tx, &rx, 296, per_round)?;
        }
    }
    drop(router);
    let (hop, base_line) = (hop.result(), base_line.result());
    hop.print();
    base_line.print();
    results.push(hop);
    results.extend(direct);
    results.push(base_line);
    let (hop, direct) = (&results[2], &results[5]);
    println!(
        "added by the hop at {} frames/s: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us",
        args.rate,
        hop.p50_us - direct.p50_us,
        hop.p99_us - direct.p99_us,
        hop.p999_us - direct.p999_us
    );
    if let Some(path) = &args.json {
        let v: Vec<_> = results.iter().map(RunResult::json).collect();
        let doc = serde_json::json!({"driver": args.driver, "workers": args.workers, "runs": v});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}

/// Pins this thread, and so every thread it starts later, to every online CPU but `cpu`.
fn pin_to_all_but(cpu: usize) -> Result<()> {
    let n = std::thread::available_parallelism()?.get();
    // SAFETY: cpu_set_t is a plain bit array, valid when zeroed; CPU_SET writes inside it.
    #[allow(unsafe_code)]
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in (0..n).filter(|&c| c != cpu) {
            libc::CPU_SET(c, &mut set);
        }
        set
    };
    if n < 2 {
        bail!("--router-cpu needs at least two CPUs");
    }
    // SAFETY: sched_setaffinity reads `size_of::<cpu_set_t>()` bytes from `set`.
    #[allow(unsafe_code)]
    let r = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Lets sleeps end within ~1 us of their deadline instead of the default 50 us.
fn set_timer_slack() {
    // SAFETY: prctl with PR_SET_TIMERSLACK takes one integer argument and touches no memory.
    #[allow(unsafe_code)]
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000, 0, 0, 0);
    }
}

struct Router {
    child: Child,
    port: u16,
}

impl Router {
    fn start(args: &Args) -> Result<Self> {
        let bin = match &args.router {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("hyphae-router"),
        };
        let port = free_port()?;
        let api = free_port()?;
        let dir = std::env::temp_dir().join(format!("hyphae-transit-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let key = dir.join("key");
        std::fs::write(&key, [0x77u8; 32])?;
        let mut cmd = match args.router_cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        router_args(&mut cmd, &key, port, api, &args.driver, args.workers);
        if let Some(n) = args.router_rcvbuf {
            cmd.args(["--tcp-rcvbuf", &n.to_string()]);
        }
        let child = cmd.stdout(Stdio::null()).spawn().with_context(|| {
            format!(
                "starting {} (build it with cargo build --release -p hyphae-router)",
                bin.display()
            )
        })?;
        let r = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", api)).is_err() {
            if Instant::now() > deadline {
                bail!("router did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(r)
    }

    /// User plus system CPU seconds the router has used.
    fn cpu_seconds(&self) -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())) else {
            return 0.0;
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return 0.0;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // SAFETY: sysconf reads a configuration value and touches no memory of ours.
        #[allow(unsafe_code)]
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (ticks(11) + ticks(12)) / hz.max(1.0)
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set_notsent_lowat(s: &TcpStream) {
    set_int_opt(s, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, 128 * 1024);
}

fn set_int_opt(s: &TcpStream, level: libc::c_int, name: libc::c_int, v: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local.
    #[allow(unsafe_code)]
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

struct Peer {
    key: PublicKey,
    stream: TcpStream,
}

fn announce(seed: u8, port: u16) -> Result<Peer> {
    let secret = SecretKey::from_bytes([seed; 32]);
    let key = secret.public_key();
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    // Behave like a hyphae peer: a short unsent backlog in the kernel.
    set_notsent_lowat(&stream);
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
fn peers(router: &Router) -> Result<(Sender, Receiver)> {
    let tx = announce(1, router.port)?;
    let rx = announce(2, router.port)?;
    // Send probes until one arrives: the router has learned both routes.
    let hdr = DataHeader {
        hop_limit: 64,
        src: tx.key.address(),
        dst: rx.key.address(),
    };
    let mut sender = Sender {
        stream: tx.stream,
        hdr,
    };
    let receiver = Receiver::spawn(rx.stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.frames.load(Relaxed) == 0 {
        if Instant::now() > deadline {
            bail!("no route through the router");
        }
        sender.send_batch(&sender.batch(296, 1, 0))?;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((sender, receiver))
}

fn direct_pair() -> Result<(Sender, Receiver)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let a = TcpStream::connect(l.local_addr()?)?;
    let (b, _) = l.accept()?;
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    let hdr = DataHeader {
        hop_limit: 64,
        src: "4a9::1".parse()?,
        dst: "4a9::2".parse()?,
    };
    Ok((Sender { stream: a, hdr }, Receiver::spawn(b)))
}

struct Sender {
    stream: TcpStream,
    hdr: DataHeader,
}

impl Sender {
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

    fn send_batch(&mut self, b: &[u8]) -> Result<()> {
        self.stream.write_all(b)?;
        Ok(())
    }
}

struct Receiver {
    frames: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    hist: Arc<std::sync::Mutex<Histogram<u64>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn spawn(mut stream: TcpStream) -> Self {
        // A sink slower than the router would otherwise time its own autotuned receive backlog
        // (megabytes); a small buffer pushes that backlog back into the router's queue, whose
        // bound is what the saturation latency should show.
        set_int_opt(&stream, libc::SOL_SOCKET, libc::SO_RCVBUF, 256 * 1024);
        let frames = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let hist = Arc::new(std::sync::Mutex::new(new_hist()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, b, h, s) = (frames.clone(), bytes.clone(), hist.clone(), stop.clone());
        let base = *BASE.get_or_init(Instant::now);
        std::thread::spawn(move || {
            let mut buf = BytesMut::with_capacity(1 << 20);
            let mut d = Deframer::new();
            let mut chunk = vec![0u8; 1 << 18];
            let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
            while !s.load(Relaxed) {
                let n = match stream.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(_) => continue,
                };
                buf.extend_from_slice(&chunk[..n]);
                let mut local_frames = 0;
                let mut local_bytes = 0;
                while let Ok(Some(fr)) = d.next_frame(&mut buf) {
                    if let Frame::Data(df) = fr {
                        local_frames += 1;
                        local_bytes += df.as_bytes().len() as u64;
                        let body = df.body();
                        if body.len() >= 16 && body[..8] == MAGIC.to_le_bytes() {
                            let sent =
                                u64::from_le_bytes(body[8..16].try_into().unwrap_or_default());
                            let now = base.elapsed().as_nanos() as u64;
                            if let Ok(mut hist) = h.lock() {
                                let _ = hist.record(now.saturating_sub(sent).max(1));
                            }
                        }
                    }
                }
                f.fetch_add(local_frames, Relaxed);
                b.fetch_add(local_bytes, Relaxed);
            }
        });
        Self {
            frames,
            bytes,
            hist,
            stop,
        }
    }

    fn reset(&self) {
        if let Ok(mut h) = self.hist.lock() {
            h.reset();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

struct RunResult {
    name: String,
    frame_len: usize,
    offered: Option<u64>,
    frames_per_s: f64,
    gbit_per_s: f64,
    router_cpu_s: Option<f64>,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    /// (quantile, microseconds) along the latency distribution, for plots.
    curve: Vec<(f64, f64)>,
}

impl RunResult {
    fn print(&self) {
        let cpu = self
            .router_cpu_s
            .map_or(String::new(), |c| format!(", router CPU {c:.2} s"));
        let offered = self
            .offered
            .map_or(String::new(), |o| format!(" offered {o}/s"));
        println!(
            "{:<28} {:>5} B{offered}: {:>9.0} frames/s {:>6.2} Gbit/s{cpu}; latency p50 {:.1} us p99 {:.1} us p99.9 {:.1} us max {:.1} us",
            self.name,
            self.frame_len,
            self.frames_per_s,
            self.gbit_per_s,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        );
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name, "frame_len": self.frame_len, "offered_per_s": self.offered,
            "frames_per_s": self.frames_per_s, "gbit_per_s": self.gbit_per_s, "router_cpu_s": self.router_cpu_s,
            "p50_us": self.p50_us, "p99_us": self.p99_us, "p999_us": self.p999_us, "max_us": self.max_us,
            "curve": self.curve,
        })
    }
}

/// Quantiles at which latency curves are sampled.
const CURVE: [f64; 10] = [
    0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
];

/// A copy of what the receiver recorded so far.
fn recorded(rx: &Receiver) -> Histogram<u64> {
    rx.hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| new_hist())
}

fn curve(rx: &Receiver) -> Vec<(f64, f64)> {
    curve_of(&recorded(rx))
}

fn percentiles(rx: &Receiver) -> (f64, f64, f64, f64) {
    percentiles_of(&recorded(rx))
}

/// (quantile, microseconds) at each of [`CURVE`]'s quantiles of a histogram in nanoseconds.
fn curve_of(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    CURVE
        .iter()
        .map(|q| (*q, h.value_at_quantile(*q) as f64 / 1000.0))
        .collect()
}

/// p50, p99, p99.9 and max, in microseconds, of a histogram in nanoseconds.
fn percentiles_of(h: &Histogram<u64>) -> (f64, f64, f64, f64) {
    let us = |v: u64| v as f64 / 1000.0;
    (
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max()),
    )
}

/// Streams `frame_len`-byte frames as fast as `tx` takes them for `secs`. Through a router
/// (`Some`) after half a second of warm-up, counting its CPU time; `None`: the direct path.
fn saturate(
    tx: &mut Sender,
    rx: &Receiver,
    frame_len: usize,
    secs: f64,
    router: Option<&Router>,
) -> Result<RunResult> {
    let per_write = (256 * 1024 / frame_len).max(1);
    if router.is_some() {
        let warm = Instant::now();
        while warm.elapsed() < Duration::from_millis(500) {
            tx.send_batch(&tx.batch(frame_len, per_write, now_ns()))?;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    rx.reset();
    let cpu = || router.map(Router::cpu_seconds);
    let (f0, b0, c0) = (rx.frames.load(Relaxed), rx.bytes.load(Relaxed), cpu());
    let t0 = Instant::now();
    let mut template = tx.batch(frame_len, per_write, 0);
    while t0.elapsed().as_secs_f64() < secs {
        // Stamp the first frame of each write with the time it is handed to the kernel.
        template[40 + 8..40 + 16].copy_from_slice(&now_ns().to_le_bytes());
        tx.send_batch(&template)?;
    }
    let el = t0.elapsed().as_secs_f64();
    let (f1, b1, c1) = (rx.frames.load(Relaxed), rx.bytes.load(Relaxed), cpu());
    let (p50, p99, p999, max) = percentiles(rx);
    // Drain what is still queued before the next run.
    std::thread::sleep(Duration::from_millis(300));
    Ok(RunResult {
        name: match router {
            Some(_) => "saturation".into(),
            None => "saturation, direct TCP".into(),
        },
        frame_len,
        offered: None,
        frames_per_s: (f1 - f0) as f64 / el,
        gbit_per_s: (b1 - b0) as f64 * 8.0 / el / 1e9,
        router_cpu_s: c1.zip(c0).map(|(c1, c0)| c1 - c0),
        p50_us: p50,
        p99_us: p99,
        p999_us: p999,
        max_us: max,
        curve: curve(rx),
    })
}

/// Paced open-loop latency over one path, accumulated over rounds. Open loop: frame `i` is due
/// at `t0 + i / rate`; each carries its due time, so lateness of the generator counts against
/// the path, never hides (no coordinated omission).
struct Paced {
    name: String,
    rate: u64,
    hist: Histogram<u64>,
    frames: u64,
    bytes: u64,
    secs: f64,
}

impl Paced {
    fn new(name: &str, rate: u64) -> Self {
        Self {
            name: format!("paced, {name}"),
            rate,
            hist: new_hist(),
            frames: 0,
            bytes: 0,
            secs: 0.0,
        }
    }

    /// One round: `secs` of frames sent at their scheduled times, each stamped with it.
    fn round(&mut self, tx: &mut Sender, rx: &Receiver, frame_len: usize, secs: f64) -> Result<()> {
        std::thread::sleep(Duration::from_millis(100));
        rx.reset();
        let f0 = rx.frames.load(Relaxed);
        let b0 = rx.bytes.load(Relaxed);
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
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(h) = rx.hist.lock() {
            self.hist += &*h;
        }
        self.frames += rx.frames.load(Relaxed) - f0;
        self.bytes += rx.bytes.load(Relaxed) - b0;
        self.secs += secs;
        Ok(())
    }

    fn result(&self) -> RunResult {
        let (p50_us, p99_us, p999_us, max_us) = percentiles_of(&self.hist);
        RunResult {
            name: self.name.clone(),
            frame_len: 296,
            offered: Some(self.rate),
            frames_per_s: self.frames as f64 / self.secs.max(1e-9),
            gbit_per_s: self.bytes as f64 * 8.0 / self.secs.max(1e-9) / 1e9,
            router_cpu_s: None,
            p50_us,
            p99_us,
            p999_us,
            max_us,
            curve: curve_of(&self.hist),
        }
    }
}
