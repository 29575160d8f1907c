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
//! saturation straight over one TCP connection (the generator's own floor on this machine).
//!
//! Then, paced open-loop at a fixed rate, in each of three placements of the threads on the
//! vCPUs (see [`Placement`]), the latency over three paths: through the router, through a plain
//! relay process (`relay`: one read and one write per wake, the floor of any hop here), and
//! straight over TCP. A path's latency minus the direct path's is what its hop adds.

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
    /// Seconds per saturation run (0: no saturation runs).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Paced rate, frames/s.
    #[arg(long, default_value_t = 50_000)]
    rate: u64,
    /// Seconds of the paced run, per path and placement.
    #[arg(long, default_value_t = 12.0)]
    paced_seconds: f64,
    /// Rounds the paced run is split into; in each, the three paths take turns, and each path
    /// goes first equally often when this is a multiple of three.
    #[arg(long, default_value_t = 12)]
    rounds: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Passed to the router as --tcp-rcvbuf (bytes).
    #[arg(long)]
    router_rcvbuf: Option<usize>,
    /// Placements of the paced run, comma-separated; each gets its own router and rounds.
    #[arg(long, value_delimiter = ',', default_values = ["unpinned", "split", "apart"])]
    placement: Vec<Placement>,
    /// The plain relay measured as the floor of a hop (default: `relay` next to this binary).
    #[arg(long)]
    relay: Option<std::path::PathBuf>,
}

/// Where the paced run's generator, sinks and hop (router or relay) run. The two pinned
/// placements need two vCPUs and use vCPUs 0 and 1; `../shared/PERF-NOTES.md` 6.1 asks for
/// every run in several placements, since they differ by up to 2x on a shared VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Placement {
    /// Wherever the scheduler puts them.
    Unpinned,
    /// The hop on vCPU 1; the generator and the sinks on vCPU 0.
    Split,
    /// The generator on vCPU 0; the hop and the sinks on vCPU 1. Every path then hands each
    /// frame from one vCPU to the other exactly once, so the difference between the paths is
    /// the hop's own work rather than an extra cross-vCPU wake-up.
    Apart,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Self::Unpinned => "unpinned",
            Self::Split => "split",
            Self::Apart => "apart",
        }
    }

    /// The vCPUs of the generator, the sinks and the hop (`None`: any the process may use),
    /// given the two vCPUs the pinned placements use.
    fn cpus(self, [a, b]: [usize; 2]) -> [Option<usize>; 3] {
        match self {
            Self::Unpinned => [None, None, None],
            Self::Split => [Some(a), Some(a), Some(b)],
            Self::Apart => [Some(a), Some(b), Some(b)],
        }
    }
}

const MAGIC: u64 = 0x6879_7068_6165_2121;

fn main() -> Result<()> {
    let args = Args::parse();
    set_timer_slack();
    // The CPUs this process may use, before anything is pinned.
    let cpus = allowed_cpus()?;
    let mut results = Vec::new();
    let mut added = Vec::new();

    if args.seconds > 0.0 {
        let router = Router::start(&args, None)?;
        let (mut tx, rx) = peers(&router, None)?;
        for frame_len in [296usize, 1340] {
            let r = saturate(&mut tx, &rx, frame_len, args.seconds, Some(&router))?;
            r.print();
            results.push(r);
        }
        drop((tx, rx, router));
        let (mut dtx, drx) = direct_pair(None)?;
        // The generator's own floor: the same saturation straight over one TCP connection.
        for frame_len in [296usize, 1340] {
            let r = saturate(&mut dtx, &drx, frame_len, args.seconds, None)?;
            r.print();
            results.push(r);
        }
    }
    for &placement in &args.placement {
        let pair = match cpus[..] {
            [a, b, ..] => [a, b],
            _ if placement == Placement::Unpinned => [0, 0],
            _ => {
                println!("placement {}: skipped, needs two vCPUs", placement.name());
                continue;
            }
        };
        let (runs, a) = paced(&args, placement, pair)?;
        results.extend(runs);
        added.extend(a);
    }
    if let Some(path) = &args.json {
        let v: Vec<_> = results.iter().map(RunResult::json).collect();
        let a: Vec<_> = added.iter().map(Added::json).collect();
        let doc = serde_json::json!({
            "driver": args.driver, "workers": args.workers, "runs": v, "added": a,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}

/// The paced run in one placement: three paths from the generator to a sink (through the
/// router, through the plain relay, straight over TCP), measured in short rounds that take
/// turns so all three see the same drift of a shared machine, merged per path.
fn paced(
    args: &Args,
    placement: Placement,
    pair: [usize; 2],
) -> Result<(Vec<RunResult>, Vec<Added>)> {
    let [gen_cpu, sink_cpu, hop_cpu] = placement.cpus(pair);
    set_affinity(gen_cpu)?;
    let router = Router::start(args, hop_cpu)?;
    let (relay, rtx, rrx) = relay_pair(args, hop_cpu, sink_cpu)?;
    let mut paths = [
        (
            Paced::new(placement, "through router", args.rate),
            peers(&router, sink_cpu)?,
        ),
        (
            Paced::new(placement, "through plain relay", args.rate),
            (rtx, rrx),
        ),
        (
            Paced::new(placement, "direct TCP (baseline)", args.rate),
            direct_pair(sink_cpu)?,
        ),
    ];
    let rounds = args.rounds.max(1);
    let per_round = args.paced_seconds / rounds as f64;
    let (steal0, t0) = (steal_ms(), Instant::now());
    for round in 0..rounds {
        for i in 0..paths.len() {
            let (paced, (tx, rx)) = &mut paths[(round + i) % 3];
            paced.round(tx, rx, 296, per_round)?;
        }
    }
    let steal = steal_ms() - steal0;
    let elapsed = t0.elapsed().as_secs_f64();
    drop((router, relay));
    set_affinity(None)?;
    let runs: Vec<RunResult> = paths.iter().map(|(p, _)| p.result()).collect();
    for r in &runs {
        r.print();
    }
    // A busy host takes whole slices from the vCPUs; those stalls, not the paths, then make
    // the tail. Shown so such a run can be told apart (PERF-NOTES 6.1: discard it).
    println!(
        "placement {}: the host took {steal:.0} ms of vCPU time in these {elapsed:.0} s",
        placement.name()
    );
    let [(router, _), (relay, _), (direct, _)] = &paths;
    // Over the direct path: what each hop adds. Router over relay: what the router costs beyond
    // the plainest hop in the same placement (the only fair comparison in `split`, where the
    // direct path never crosses between vCPUs and a hop path crosses twice).
    let added = vec![
        Added::new("through router", router, direct, steal),
        Added::new("through plain relay", relay, direct, steal),
        Added::new("router over plain relay", router, relay, steal),
    ];
    for a in &added {
        a.print();
    }
    Ok((runs, added))
}

/// The latency a hop adds over the direct path, two ways: the difference of the merged
/// distributions' percentiles, and the median over rounds of the difference within a round.
/// Rounds of the three paths run back to back, so the second pairs each hop round with a
/// direct round taken moments apart, and a millisecond stall of the shared machine that falls
/// in a few rounds moves it far less than it moves the merged tail.
struct Added {
    path: String,
    placement: &'static str,
    rate: u64,
    rounds: usize,
    /// vCPU time the host took during the placement's rounds, in milliseconds.
    steal_ms: f64,
    merged: [f64; 3],
    round_median: [f64; 3],
    round_min: [f64; 3],
    round_max: [f64; 3],
}

impl Added {
    /// `hop` over `base`, measured while the host took `steal_ms` of vCPU time.
    fn new(label: &str, hop: &Paced, base: &Paced, steal_ms: f64) -> Self {
        let (h, b) = (percentiles_of(&hop.hist), percentiles_of(&base.hist));
        let mut per: [Vec<f64>; 3] = Default::default();
        let rounds = hop.per_round.iter().zip(&base.per_round);
        for (x, y) in rounds.filter_map(|(x, y)| x.zip(*y)) {
            per[0].push(x.0 - y.0);
            per[1].push(x.1 - y.1);
            per[2].push(x.2 - y.2);
        }
        let stat = |f: fn(&[f64]) -> f64| [f(&per[0]), f(&per[1]), f(&per[2])];
        Self {
            path: label.to_string(),
            placement: hop.placement,
            rate: hop.rate,
            rounds: per[0].len(),
            steal_ms,
            merged: [h.0 - b.0, h.1 - b.1, h.2 - b.2],
            round_median: stat(median),
            round_min: stat(|v| v.iter().copied().fold(f64::INFINITY, f64::min)),
            round_max: stat(|v| v.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
        }
    }

    fn print(&self) {
        println!(
            "added {} at {}/s ({}): p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us; median of {} rounds: \
             p50 {:.1} us, p99 {:.1} us (rounds {:.1}..{:.1}), p99.9 {:.1} us",
            self.path,
            self.rate,
            self.placement,
            self.merged[0],
            self.merged[1],
            self.merged[2],
            self.rounds,
            self.round_median[0],
            self.round_median[1],
            self.round_min[1],
            self.round_max[1],
            self.round_median[2],
        );
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.path, "placement": self.placement, "offered_per_s": self.rate, "rounds": self.rounds, "steal_ms": self.steal_ms,
            "merged_us": {"p50": self.merged[0], "p99": self.merged[1], "p999": self.merged[2]},
            "round_median_us": {"p50": self.round_median[0], "p99": self.round_median[1], "p999": self.round_median[2]},
            "round_min_us": {"p50": self.round_min[0], "p99": self.round_min[1], "p999": self.round_min[2]},
            "round_max_us": {"p50": self.round_max[0], "p99": self.round_max[1], "p999": self.round_max[2]},
        })
    }
}

/// The median of `v` (NaN when empty).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The CPU mask the process started with.
static ALLOWED: std::sync::OnceLock<libc::cpu_set_t> = std::sync::OnceLock::new();

/// The CPU mask the process started with (read on the first call, before any pinning).
fn allowed() -> Result<libc::cpu_set_t> {
    if let Some(set) = ALLOWED.get() {
        return Ok(*set);
    }
    // SAFETY: cpu_set_t is a plain bit array, valid when zeroed.
    #[allow(unsafe_code)]
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most `size_of::<cpu_set_t>()` bytes into `set`.
    #[allow(unsafe_code)]
    let r = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(*ALLOWED.get_or_init(|| set))
}

/// The CPUs in the mask the process started with, in order.
fn allowed_cpus() -> Result<Vec<usize>> {
    let set = allowed()?;
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads one bit inside `set`, for indices below CPU_SETSIZE.
        .filter(|&c| {
            #[allow(unsafe_code)]
            unsafe {
                libc::CPU_ISSET(c, &set)
            }
        })
        .collect())
}

/// Pins this thread, and every thread it starts later, to `cpu`, or gives it back the mask the
/// process started with.
fn set_affinity(cpu: Option<usize>) -> Result<()> {
    let set = match cpu {
        Some(c) => {
            // SAFETY: cpu_set_t is a plain bit array, valid when zeroed; CPU_SET writes one
            // bit inside it.
            #[allow(unsafe_code)]
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(c, &mut set);
                set
            }
        }
        None => allowed()?,
    };
    // SAFETY: sched_setaffinity reads `size_of::<cpu_set_t>()` bytes from `set`.
    #[allow(unsafe_code)]
    let r = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A command, run under `taskset` when it is to be pinned.
fn pinned_command(bin: &std::path::Path, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(bin);
            c
        }
        None => Command::new(bin),
    }
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
    child: Reaped,
    port: u16,
}

impl Router {
    fn start(args: &Args, cpu: Option<usize>) -> Result<Self> {
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
        let mut cmd = pinned_command(&bin, cpu);
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
        let r = Self {
            child: Reaped(child),
            port,
        };
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
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.child.0.id())) else {
            return 0.0;
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return 0.0;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / clock_ticks_per_s()
    }
}

/// The kernel's clock ticks per second (the unit of `/proc` CPU times).
fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf reads a configuration value and touches no memory of ours.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    hz.max(1.0)
}

/// CPU time the hypervisor has taken from this machine's vCPUs so far, in milliseconds
/// (`steal` in `/proc/stat`; 0 where the kernel does not report it).
fn steal_ms() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()?
                .split_whitespace()
                .nth(8)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |t| t * 1000.0 / clock_ticks_per_s())
}

/// A child process, killed and reaped when this is dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
fn peers(router: &Router, sink_cpu: Option<usize>) -> Result<(Sender, Receiver)> {
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
    let receiver = Receiver::spawn(rx.stream, sink_cpu)?;
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

fn direct_pair(sink_cpu: Option<usize>) -> Result<(Sender, Receiver)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let a = TcpStream::connect(l.local_addr()?)?;
    let (b, _) = l.accept()?;
    raw_pair(a, b, sink_cpu)
}

/// A sender on `a` and a receiver on `b`, for paths that do not route (direct and relayed).
fn raw_pair(a: TcpStream, b: TcpStream, sink_cpu: Option<usize>) -> Result<(Sender, Receiver)> {
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    let hdr = DataHeader {
        hop_limit: 64,
        src: "4a9::1".parse()?,
        dst: "4a9::2".parse()?,
    };
    Ok((Sender { stream: a, hdr }, Receiver::spawn(b, sink_cpu)?))
}

/// The plain relay (a child process) between a sender and a receiver.
fn relay_pair(
    args: &Args,
    cpu: Option<usize>,
    sink_cpu: Option<usize>,
) -> Result<(Reaped, Sender, Receiver)> {
    let bin = match &args.relay {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("relay"),
    };
    let sink = TcpListener::bind("127.0.0.1:0")?;
    let mut child = Reaped(
        pinned_command(&bin, cpu)
            .args(["--to", &sink.local_addr()?.port().to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let mut line = String::new();
    if let Some(out) = child.0.stdout.take() {
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
    }
    let port: u16 = line
        .trim()
        .parse()
        .context("the relay did not print its port")?;
    let a = TcpStream::connect(("127.0.0.1", port))?;
    sink.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let b = loop {
        match sink.accept() {
            Ok((b, _)) => break b,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = child.0.try_wait()? {
                    bail!("the relay exited: {status}");
                }
                if Instant::now() > deadline {
                    bail!("the relay did not connect to the sink");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    };
    b.set_nonblocking(false)?;
    let (tx, rx) = raw_pair(a, b, sink_cpu)?;
    Ok((child, tx, rx))
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
    fn spawn(mut stream: TcpStream, cpu: Option<usize>) -> Result<Self> {
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
        let (pinned_tx, pinned) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = set_affinity(cpu).map_err(|e| e.to_string());
            let ok = r.is_ok();
            let _ = pinned_tx.send(r);
            if !ok {
                return;
            }
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
        match pinned.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("pinning a sink: {e}"),
            Err(_) => bail!("a sink thread did not start"),
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
    /// The paced run's placement.
    placement: Option<&'static str>,
    frame_len: usize,
    offered: Option<u64>,
    frames_per_s: f64,
    gbit_per_s: f64,
    router_cpu_s: Option<f64>,
    /// Paced runs: frames that never arrived.
    lost: Option<u64>,
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
        let lost = match self.lost {
            Some(n) if n > 0 => format!(", {n} lost"),
            _ => String::new(),
        };
        let name = match self.placement {
            Some(p) => format!("{} ({p})", self.name),
            None => self.name.clone(),
        };
        println!(
            "{:<40} {:>5} B{offered}: {:>9.0} frames/s {:>6.2} Gbit/s{cpu}{lost}; latency p50 {:.1} us p99 {:.1} us p99.9 {:.1} us max {:.1} us",
            name,
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
            "name": self.name, "placement": self.placement, "frame_len": self.frame_len, "offered_per_s": self.offered,
            "frames_per_s": self.frames_per_s, "gbit_per_s": self.gbit_per_s, "router_cpu_s": self.router_cpu_s, "lost": self.lost,
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
        placement: None,
        name: match router {
            Some(_) => "saturation".into(),
            None => "saturation, direct TCP".into(),
        },
        frame_len,
        offered: None,
        frames_per_s: (f1 - f0) as f64 / el,
        gbit_per_s: (b1 - b0) as f64 * 8.0 / el / 1e9,
        router_cpu_s: c1.zip(c0).map(|(c1, c0)| c1 - c0),
        lost: None,
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
    placement: &'static str,
    /// Each round's (p50, p99, p99.9, max), in microseconds (`None`: nothing arrived).
    per_round: Vec<Option<(f64, f64, f64, f64)>>,
    /// Frames that had not arrived a second after their round ended.
    lost: u64,
    rate: u64,
    hist: Histogram<u64>,
    frames: u64,
    bytes: u64,
    secs: f64,
}

impl Paced {
    fn new(placement: Placement, name: &str, rate: u64) -> Self {
        Self {
            name: format!("paced, {name}"),
            placement: placement.name(),
            per_round: Vec::new(),
            lost: 0,
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
        // Wait for the round's last frames: a late frame counts at its lateness; one still
        // missing after a second is reported as lost.
        let deadline = Instant::now() + Duration::from_secs(1);
        while rx.frames.load(Relaxed) - f0 < total && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let received = rx.frames.load(Relaxed) - f0;
        self.lost += total.saturating_sub(received);
        if let Ok(h) = rx.hist.lock() {
            self.hist += &*h;
            self.per_round
                .push((received > 0).then(|| percentiles_of(&h)));
        }
        self.frames += received;
        self.bytes += rx.bytes.load(Relaxed) - b0;
        self.secs += secs;
        Ok(())
    }

    fn result(&self) -> RunResult {
        let (p50_us, p99_us, p999_us, max_us) = percentiles_of(&self.hist);
        RunResult {
            name: self.name.clone(),
            placement: Some(self.placement),
            frame_len: 296,
            offered: Some(self.rate),
            frames_per_s: self.frames as f64 / self.secs.max(1e-9),
            gbit_per_s: self.bytes as f64 * 8.0 / self.secs.max(1e-9) / 1e9,
            router_cpu_s: None,
            lost: Some(self.lost),
            p50_us,
            p99_us,
            p999_us,
            max_us,
            curve: curve_of(&self.hist),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paced_with(rounds: &[Option<f64>]) -> Paced {
        let mut p = Paced::new(Placement::Apart, "x", 1000);
        p.per_round = rounds.iter().map(|r| r.map(|v| (v, v, v, v))).collect();
        p
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn added_pairs_rounds_and_skips_empty_ones() {
        // Round 2 of the hop and round 3 of the base received nothing: only rounds 1 and 4,
        // paired with themselves, count.
        let hop = paced_with(&[Some(30.0), None, Some(10.0), Some(50.0)]);
        let base = paced_with(&[Some(10.0), Some(10.0), None, Some(20.0)]);
        let a = Added::new("hop", &hop, &base, 0.0);
        assert_eq!(a.rounds, 2);
        assert_eq!(a.round_median[1], 25.0);
        assert_eq!(a.round_min[1], 20.0);
        assert_eq!(a.round_max[1], 30.0);
    }
}
