//! Soak: one hyphae-router under churn for a set time, sampled every interval.
//!
//! ```text
//! churn peers (16 at a time, 0.5-10 s each) ──────┐
//! flood peer (4,000 /64s announced, retracted) ───┤
//! bursts (12 links at once from one address) ─────┤
//! transit sender ── 1,000 frames/s of 296 B ──────┼──▶ router under test ──▶ transit sink
//! local socket, HTTP API: messages ───────────────┘
//!                                                             │
//!                                                             └──▶ far-end router (echoes)
//! ```
//!
//! Every `--interval` the router's RSS, open descriptors, threads and CPU time (from `/proc`) and
//! its metrics page (queued bytes over peers, inbound links, peers, routes, drops) go to a CSV.
//! When the churn stops, the fake peers that churned are gone and the rest stay, so the
//! descriptors should come back to what they were before the churn began. The summary gives RSS
//! after the warm-up (5 min, or 1/12 of a shorter run) against its maximum and last value after
//! it, descriptors before against after, CPU, and the two verdicts. The exit status is non-zero
//! only when the harness fails (a router exits, setup does not converge, a thread panics) or on
//! a clear descriptor leak (many more descriptors after the churn than before); a verdict that
//! is not met is reported, not failed.
//!
//! ```sh
//! cargo build --release -p hyphae-router -p hyphae-bench --bins
//! nice -n 5 target/release/soak --seconds 3600 --interval 10
//! ```

use std::fs::File;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::Parser;
use hyphae_bench::fake_peer::{self, FrameSet, Peer, Prefixes, STALL};
use hyphae_bench::sys::{self, Machine, Proc};
use hyphae_bench::{App, free_port, responder, router_args};
use hyphae_wire::framing::{Destination, ErrorMsg, Message, Push};
use hyphae_wire::identity::{PublicKey, SecretKey};
use hyphae_wire::{Metric, SeqNo};

#[derive(Parser, Debug)]
#[command(
    about = "Runs a hyphae-router under churn for a set time and samples its RSS, \
                   descriptors, queues and CPU"
)]
struct Args {
    /// The router under test (default: `hyphae-router` next to this binary).
    #[arg(long)]
    router: Option<PathBuf>,
    /// Seconds of churn [default: 60].
    #[arg(long)]
    seconds: Option<u64>,
    /// The CI run: 60 s of churn (the default; `--seconds` wins).
    #[arg(long)]
    quick: bool,
    /// Seconds between samples.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Where the samples go (CSV).
    #[arg(long, default_value = "bench/results/soak.csv")]
    csv: PathBuf,
    /// The router's I/O driver.
    #[arg(long, default_value = "auto")]
    driver: String,
    /// The router's data-plane workers (default: one per vCPU).
    #[arg(long)]
    workers: Option<usize>,
    /// Churn peers connected at once; each stays 0.5-10 s. (For this and the other loads, 0
    /// turns it off.)
    #[arg(long, default_value_t = 16)]
    churn_peers: usize,
    /// /64s each churn peer announces (its own and extra ones, a key each).
    #[arg(long, default_value_t = 4)]
    churn_subnets: usize,
    /// /64s of the route flood.
    #[arg(long, default_value_t = 4000)]
    flood_routes: usize,
    /// Seconds per flood cycle: announced for the first half, retracted for the second (0: the
    /// flood peer only announces its /64s once, at the start).
    #[arg(long, default_value_t = 10.0)]
    flood_period: f64,
    /// Transit data frames (296 B) per second from one fake peer to another (0: no transit, and
    /// no frames to churn and flood prefixes either).
    #[arg(long, default_value_t = 1000)]
    transit_rate: u64,
    /// Request/reply messages per second on the local socket (and a fifth as many through the
    /// HTTP API, and a fifth as many one-way to churn peers' keys).
    #[arg(long, default_value_t = 10.0)]
    msg_rate: f64,
    /// Seconds between bursts of 12 links from one address, over the router's per-address cap.
    #[arg(long, default_value_t = 15.0)]
    burst_every: f64,
    /// At most this many seconds for descriptors to come back after the churn stops.
    #[arg(long, default_value_t = 20.0)]
    settle: f64,
    /// Seed of the churn's randomness (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
}

/// The topic of every message; the far end echoes it.
const TOPIC: &[u8] = b"soak";
/// Frame size of the transit traffic.
const FRAME: usize = 296;
/// Descriptors over the baseline still counted as "back to baseline".
const FD_TOLERANCE: i64 = 2;
/// Links the router holds outside the churn: far end, transit sender and sink, flood peer.
const STEADY_LINKS: u64 = 4;

fn main() {
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("soak: harness failure: {e:#}");
            std::process::exit(1);
        }
    }
}

/// What the load threads count, read by the sampler.
#[derive(Debug, Default)]
struct Stats {
    churn_links: AtomicU64,
    churn_no_link: AtomicU64,
    churn_closed: AtomicU64,
    churn_frozen: AtomicU64,
    frozen_dropped: AtomicU64,
    frozen_kept: AtomicU64,
    frozen_unseen: AtomicU64,
    frozen_ms: Mutex<Vec<u64>>,
    flood_cycles: AtomicU64,
    flood_errors: AtomicU64,
    transit_sent: AtomicU64,
    transit_errors: AtomicU64,
    wander_sent: AtomicU64,
    msgs_ok: AtomicU64,
    msgs_failed: AtomicU64,
    oneway_ok: AtomicU64,
    oneway_failed: AtomicU64,
    http_ok: AtomicU64,
    http_failed: AtomicU64,
    local_connections: AtomicU64,
    bursts: AtomicU64,
    burst_links: AtomicU64,
    notes: Mutex<Vec<String>>,
}

impl Stats {
    /// Keeps the first few notes of each kind of trouble.
    fn note(&self, what: String) {
        if let Ok(mut n) = self.notes.lock()
            && n.len() < 40
        {
            n.push(what);
        }
    }
}

/// The latest metrics page, polled a few times a second so frozen peers can see their link go.
#[derive(Debug, Default)]
struct Watch {
    page: Mutex<Option<(Instant, String)>>,
}

impl Watch {
    /// Whether a page fetched after `after` holds a peer with endpoint `ep` (`None`: no page
    /// that recent yet).
    fn has_endpoint(&self, ep: &str, after: Instant) -> Option<bool> {
        let page = self.page.lock().ok()?;
        let (at, text) = page.as_ref()?;
        (*at > after).then(|| text.contains(&format!("endpoint=\"{ep}\"")))
    }
}

/// Everything the load threads share.
#[derive(Debug)]
struct Ctx {
    stop: AtomicBool,
    stats: Stats,
    watch: Watch,
    /// The router's TCP port.
    tcp: SocketAddr,
    api: SocketAddr,
    metrics: SocketAddr,
    sock: PathBuf,
    far_pk: PublicKey,
    /// Churn peers' prefix sets; an index is taken while a peer uses it.
    pool: Vec<Arc<Prefixes>>,
    free: Mutex<Vec<usize>>,
    next_addr: AtomicU64,
    seed: u64,
}

impl Ctx {
    fn stopped(&self) -> bool {
        self.stop.load(Relaxed)
    }

    /// Waits for the churn to stop (a load that is turned off).
    fn idle(&self) {
        while self.sleep(Duration::from_secs(1)) {}
    }

    /// Sleeps `d`, or less if the churn stops; whether it is still running.
    fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while !self.stopped() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        false
    }

    /// A loopback source address not used before in this run (127.1.a.b, 63,500 of them).
    fn fresh_addr(&self) -> IpAddr {
        let n = self.next_addr.fetch_add(1, Relaxed) % (250 * 254);
        IpAddr::V4(Ipv4Addr::new(
            127,
            1,
            (n / 254 + 1) as u8,
            (n % 254 + 1) as u8,
        ))
    }
}

/// xorshift64*: the churn's dice.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One row of the CSV.
#[derive(Debug, Clone, Default)]
struct Sample {
    phase: &'static str,
    t: f64,
    rss_kib: u64,
    /// The anonymous part of RSS (heap, stacks: the router's own memory).
    anon_kib: u64,
    /// The file-backed part (the binary's and libraries' pages touched so far).
    file_kib: u64,
    fds: usize,
    threads: u64,
    cpu_s: f64,
    /// vCPUs busy since the previous sample.
    vcpus: f64,
    m: Option<Metrics>,
    churn_links: u64,
    transit_sent: u64,
    transit_delivered: u64,
    msgs_ok: u64,
    msgs_failed: u64,
    load1: f64,
}

/// What the metrics page says.
#[derive(Debug, Clone, Copy, Default)]
struct Metrics {
    peers: u64,
    inbound: u64,
    routes: u64,
    selected: u64,
    queued: u64,
    ctl_queued: u64,
    drops: u64,
    refused: u64,
}

impl Metrics {
    fn parse(page: &str) -> Self {
        let sum = |name: &str| -> u64 {
            page.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (key, v) = l.rsplit_once(' ')?;
                    let n = key.split('{').next()?;
                    (n == name).then(|| v.parse::<f64>().ok())?
                })
                .sum::<f64>() as u64
        };
        let drops = drops_by_reason(page).iter().map(|(_, n)| n).sum();
        Self {
            peers: sum("hyphae_peers"),
            inbound: sum("hyphae_inbound_links"),
            routes: sum("hyphae_routes"),
            selected: sum("hyphae_routes_selected"),
            queued: sum("hyphae_peer_queued_bytes"),
            ctl_queued: sum("hyphae_peer_control_queued_bytes"),
            drops,
            refused: sum("hyphae_inbound_refused_total"),
        }
    }
}

/// The workers' drop counters (`hyphae_drop_<reason>_total`), summed over workers, by reason.
fn drops_by_reason(page: &str) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = Vec::new();
    for l in page.lines() {
        let Some(rest) = l.strip_prefix("hyphae_drop_") else {
            continue;
        };
        let Some((reason, _)) = rest.split_once("_total") else {
            continue;
        };
        let n = l
            .rsplit_once(' ')
            .and_then(|(_, n)| n.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        match v.iter_mut().find(|(r, _)| r == reason) {
            Some((_, t)) => *t += n,
            None => v.push((reason.to_owned(), n)),
        }
    }
    v
}

const CSV_HEADER: &str = "phase,t_s,rss_kib,fds,threads,cpu_s,vcpus,peers,inbound_links,routes,\
routes_selected,queued_bytes,control_queued_bytes,drops,inbound_refused,churn_links,transit_sent,\
transit_delivered,msgs_ok,msgs_failed,load1,rss_anon_kib,rss_file_kib";

impl Sample {
    fn csv(&self) -> String {
        let m = self.m.map_or_else(
            || ",,,,,,,".to_owned(),
            |m| {
                format!(
                    "{},{},{},{},{},{},{},{}",
                    m.peers,
                    m.inbound,
                    m.routes,
                    m.selected,
                    m.queued,
                    m.ctl_queued,
                    m.drops,
                    m.refused
                )
            },
        );
        format!(
            "{},{:.1},{},{},{},{:.2},{:.3},{m},{},{},{},{},{},{:.2},{},{}",
            self.phase,
            self.t,
            self.rss_kib,
            self.fds,
            self.threads,
            self.cpu_s,
            self.vcpus,
            self.churn_links,
            self.transit_sent,
            self.transit_delivered,
            self.msgs_ok,
            self.msgs_failed,
            self.load1,
            self.anon_kib,
            self.file_kib
        )
    }
}

/// The router under test and what reads it.
#[derive(Debug)]
struct Subject {
    router: Proc,
    far: Proc,
    metrics: SocketAddr,
}

impl Subject {
    fn check(&mut self) -> Result<()> {
        self.router.check()?;
        self.far.check()
    }

    fn sample(&self, phase: &'static str, t: f64, prev: Option<&Sample>, ctx: &Ctx) -> Sample {
        let pid = self.router.pid();
        let cpu_s = sys::cpu_seconds(pid).unwrap_or(0.0);
        let page = sys::http_get(self.metrics, "/metrics", Duration::from_secs(5)).ok();
        let s = &ctx.stats;
        let vcpus = prev.map_or(0.0, |p| {
            let dt = t - p.t;
            if dt > 0.0 {
                (cpu_s - p.cpu_s) / dt
            } else {
                0.0
            }
        });
        Sample {
            phase,
            t,
            rss_kib: sys::status_bytes(pid, "VmRSS").unwrap_or(0) / 1024,
            anon_kib: sys::status_bytes(pid, "RssAnon").unwrap_or(0) / 1024,
            file_kib: sys::status_bytes(pid, "RssFile").unwrap_or(0) / 1024,
            fds: sys::open_fds(pid).unwrap_or(0),
            threads: sys::status_count(pid, "Threads").unwrap_or(0),
            cpu_s,
            vcpus,
            m: page.as_deref().map(Metrics::parse),
            churn_links: s.churn_links.load(Relaxed),
            transit_sent: s.transit_sent.load(Relaxed),
            transit_delivered: 0,
            msgs_ok: s.msgs_ok.load(Relaxed) + s.http_ok.load(Relaxed) + s.oneway_ok.load(Relaxed),
            msgs_failed: s.msgs_failed.load(Relaxed)
                + s.http_failed.load(Relaxed)
                + s.oneway_failed.load(Relaxed),
            load1: sys::loadavg(),
        }
    }
}

fn run() -> Result<i32> {
    let args = Args::parse();
    let seconds = args.seconds.unwrap_or(60);
    if args.quick && args.seconds.is_none() {
        println!("--quick: 60 s of churn");
    }
    if seconds == 0 || args.interval <= 0.0 {
        bail!("--seconds and --interval must be positive");
    }
    let bin = match &args.router {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("hyphae-router"),
    };
    if !bin.exists() {
        bail!("no router binary at {} (--router PATH)", bin.display());
    }
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let machine = Machine::here();
    println!(
        "soak: {machine}; load average {:.2} at the start",
        sys::loadavg()
    );
    println!(
        "router under test: {} ({}), --driver {} --workers {workers}; {} s of churn, a sample every {} s, seed {seed}",
        bin.display(),
        sys::version_of(&bin).unwrap_or_else(|| "version unknown".into()),
        args.driver,
        seconds,
        args.interval
    );

    let dir = std::env::temp_dir().join(format!("hyphae-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    // Keys first: x25519 is slow in debug builds, and none of this is load.
    let t_keys = Instant::now();
    let sender_p = Arc::new(Prefixes::new(0x21, 1));
    let sink_p = Arc::new(Prefixes::new(0x22, 1));
    let flood_p = Arc::new(Prefixes::new(0x23, args.flood_routes.max(1)));
    let pool_n = (args.churn_peers * 2).clamp(2, 120);
    let pool: Vec<Arc<Prefixes>> = (0..pool_n)
        .map(|i| Arc::new(Prefixes::new(0x80 + i as u8, args.churn_subnets.max(1))))
        .collect();
    println!(
        "keys: {} /64s for the flood, {pool_n} churn prefix sets of {}, in {:.1} s",
        flood_p.len(),
        args.churn_subnets.max(1),
        t_keys.elapsed().as_secs_f64()
    );

    // The router under test, then the far end dialing it.
    let key = dir.join("router.key");
    std::fs::write(&key, [0x41u8; 32])?;
    let (port, api, metrics) = (free_port()?, free_port()?, free_port()?);
    let metrics = SocketAddr::from(([127, 0, 0, 1], metrics));
    let mut cmd = Command::new(&bin);
    router_args(&mut cmd, &key, port, api, &args.driver, workers)
        .args(["--metrics-api-address", &metrics.to_string()])
        .env("RUST_LOG", "warn");
    let router = Proc::spawn("router under test", &mut cmd, dir.join("router.log"))?;
    let api = SocketAddr::from(([127, 0, 0, 1], api));
    let tcp = SocketAddr::from(([127, 0, 0, 1], port));
    let sock = key.with_extension("sock");

    let far_key = dir.join("far.key");
    std::fs::write(&far_key, [0x42u8; 32])?;
    let far_pk = SecretKey::from_bytes([0x42u8; 32]).public_key();
    let (far_port, far_api) = (free_port()?, free_port()?);
    let mut cmd = Command::new(&bin);
    router_args(&mut cmd, &far_key, far_port, far_api, &args.driver, 1)
        .args(["--peers", &format!("tcp://{tcp}")])
        .env("RUST_LOG", "warn");
    let far = Proc::spawn("far-end router", &mut cmd, dir.join("far.log"))?;
    let far_sock = far_key.with_extension("sock");
    let mut subject = Subject {
        router,
        far,
        metrics,
    };
    wait_for(
        "both routers up",
        Duration::from_secs(20),
        &mut subject,
        || {
            (sys::http_get(metrics, "/metrics", Duration::from_secs(1)).is_ok()
                && std::os::unix::net::UnixStream::connect(&sock).is_ok()
                && std::os::unix::net::UnixStream::connect(&far_sock).is_ok())
            .then_some(())
        },
    )?;
    std::thread::spawn(move || responder(&far_sock, TOPIC));

    let ctx = Arc::new(Ctx {
        stop: AtomicBool::new(false),
        stats: Stats::default(),
        watch: Watch::default(),
        tcp,
        api,
        metrics,
        sock,
        far_pk,
        free: Mutex::new((0..pool.len()).collect()),
        pool,
        next_addr: AtomicU64::new(0),
        seed,
    });
    // Runs until the end, after the churn threads.
    let watch_stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (c, stop) = (ctx.clone(), watch_stop.clone());
        std::thread::Builder::new()
            .name("watch".into())
            .spawn(move || watcher(&c, &stop))?
    };

    // The steady peers: transit sender and sink, the flood peer.
    let sender = fake_peer::tcp::dial(sender_p.clone(), tcp)?;
    let sink = fake_peer::tcp::dial(sink_p.clone(), tcp)?;
    let flood = fake_peer::tcp::dial(flood_p.clone(), tcp)?;
    let t_setup = Instant::now();
    wait_for(
        "the steady links",
        Duration::from_secs(15),
        &mut subject,
        || {
            [&sender, &sink, &flood]
                .iter()
                .all(|p| p.counters.links_up.load(Relaxed) > 0)
                .then_some(())
        },
    )?;
    let want_routes = flood_p.len() as u64 + 3;
    wait_for(
        &format!("{want_routes} routes (flood, transit, far end)"),
        Duration::from_secs(120),
        &mut subject,
        || {
            let page = sys::http_get(metrics, "/metrics", Duration::from_secs(2)).ok()?;
            (Metrics::parse(&page).selected >= want_routes).then_some(())
        },
    )?;
    let probe = Arc::new(FrameSet::new(
        sender_p.address(0),
        &[sink_p.address(0)],
        FRAME,
        None,
    )?);
    wait_for(
        "a transit frame",
        Duration::from_secs(20),
        &mut subject,
        || {
            let _ = sender.generator.send_once(probe.clone(), STALL);
            std::thread::sleep(Duration::from_millis(100));
            (sink.counters.frames.load(Relaxed) > 0).then_some(())
        },
    )?;
    wait_for(
        "a message round trip to the far end",
        Duration::from_secs(30),
        &mut subject,
        || {
            let mut app = App::connect(&ctx.sock).ok()?;
            app.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
            request(&mut app, 1, &ctx.far_pk, b"hello", Some(3000))
                .ok()?
                .then_some(())
        },
    )?;
    println!(
        "setup: routers up, {} links, {want_routes} routes, transit and messages through, in {:.1} s",
        STEADY_LINKS,
        t_setup.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));
    let base = subject.sample("base", 0.0, None, &ctx);
    let base_page = sys::http_get(metrics, "/metrics", Duration::from_secs(5)).unwrap_or_default();
    println!(
        "baseline before the churn: RSS {:.1} MiB, {} descriptors, {} threads, {} peers",
        base.rss_kib as f64 / 1024.0,
        base.fds,
        base.threads,
        base.m.map_or(0, |m| m.peers)
    );

    let mut csv = File::create(&args.csv)
        .with_context(|| format!("creating {} (--csv PATH)", args.csv.display()))?;
    writeln!(csv, "{CSV_HEADER}")?;
    let sink_frames_at_start = sink.counters.frames.load(Relaxed);

    // The churn. The transit sender and the flood peer go to their threads and come back at
    // the end: they stay linked while the router settles.
    let mut threads: Vec<(String, JoinHandle<Option<Peer>>)> = Vec::new();
    let mut spawn = |name: String, f: Box<dyn FnOnce() -> Option<Peer> + Send>| -> Result<()> {
        let h = std::thread::Builder::new().name(name.clone()).spawn(f)?;
        threads.push((name, h));
        Ok(())
    };
    for i in 0..args.churn_peers {
        let c = ctx.clone();
        spawn(
            format!("churn-{i}"),
            Box::new(move || {
                churn_slot(&c, i);
                None
            }),
        )?;
    }
    {
        let (c, p, period) = (ctx.clone(), flood_p.clone(), args.flood_period);
        spawn(
            "flood".into(),
            Box::new(move || {
                flood_loop(&c, &flood, &p, period);
                Some(flood)
            }),
        )?;
    }
    {
        let c = ctx.clone();
        let (src, dst, rate) = (sender_p.address(0), sink_p.address(0), args.transit_rate);
        let wander: Vec<std::net::Ipv6Addr> = ctx
            .pool
            .iter()
            .map(|p| p.address(0))
            .chain((0..16).map(|i| flood_p.address(i * 97)))
            .collect();
        spawn(
            "transit".into(),
            Box::new(move || {
                transit_loop(&c, &sender, src, dst, &wander, rate);
                Some(sender)
            }),
        )?;
    }
    {
        let (c, rate) = (ctx.clone(), args.msg_rate);
        spawn(
            "local-socket".into(),
            Box::new(move || {
                local_loop(&c, rate);
                None
            }),
        )?;
        let c = ctx.clone();
        spawn(
            "http-api".into(),
            Box::new(move || {
                http_loop(&c, rate / 5.0);
                None
            }),
        )?;
    }
    {
        let (c, every) = (ctx.clone(), args.burst_every);
        spawn(
            "bursts".into(),
            Box::new(move || {
                burst_loop(&c, every);
                None
            }),
        )?;
    }

    let t0 = Instant::now();
    let every = Duration::from_secs_f64(args.interval);
    let print_every = (seconds as f64 / 30.0).max(10.0);
    let mut samples: Vec<Sample> = Vec::new();
    let mut next = t0;
    let mut next_print = 0.0;
    let mut failure = None;
    let zero = zero_at(&base);
    loop {
        let t = t0.elapsed().as_secs_f64();
        let mut s = subject.sample("run", t, samples.last().or(Some(&zero)), &ctx);
        s.transit_delivered = sink.counters.frames.load(Relaxed) - sink_frames_at_start;
        writeln!(csv, "{}", s.csv())?;
        csv.flush()?;
        if t >= next_print {
            progress(&s);
            next_print += print_every;
        }
        samples.push(s);
        if let Err(e) = subject.check() {
            failure = Some(e);
            break;
        }
        if let Some((name, _)) = threads.iter().find(|(_, h)| h.is_finished()) {
            failure = Some(anyhow::anyhow!("load thread {name} ended early"));
            break;
        }
        if t >= seconds as f64 {
            break;
        }
        next += every;
        let end = t0 + Duration::from_secs(seconds);
        std::thread::sleep(next.min(end).saturating_duration_since(Instant::now()));
    }
    let churn_s = t0.elapsed().as_secs_f64();
    ctx.stop.store(true, Relaxed);
    let mut panicked = Vec::new();
    let mut kept = Vec::new();
    for (name, h) in threads {
        match h.join() {
            Ok(p) => kept.extend(p),
            Err(_) => panicked.push(name),
        }
    }
    if let Some(e) = failure {
        watch_stop.store(true, Relaxed);
        let _ = watcher.join();
        return Err(e.context(format!("logs in {}", dir.display())));
    }
    if !panicked.is_empty() {
        bail!("load threads panicked: {}", panicked.join(", "));
    }

    // Settle: the churn is gone; descriptors should come back to the baseline.
    let t_stop = Instant::now();
    let mut settled = None;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let t = t0.elapsed().as_secs_f64();
        let mut s = subject.sample("settle", t, samples.last(), &ctx);
        s.transit_delivered = sink.counters.frames.load(Relaxed) - sink_frames_at_start;
        writeln!(csv, "{}", s.csv())?;
        let back = s.fds as i64 - base.fds as i64 <= FD_TOLERANCE
            && s.m.is_some_and(|m| m.peers <= STEADY_LINKS);
        let waited = t_stop.elapsed().as_secs_f64();
        samples.push(s);
        if back && settled.is_none() {
            settled = Some(waited);
        }
        // A few seconds more after it is back, to see it stay there and the CPU go idle.
        if settled.is_some_and(|at| waited >= at + 3.0) || waited >= args.settle {
            break;
        }
    }
    subject.check()?;
    watch_stop.store(true, Relaxed);
    let _ = watcher.join();
    csv.flush()?;

    let code = summary(
        &args, &base, &samples, churn_s, settled, &ctx.stats, &subject, &base_page,
    );
    println!("samples in {}", args.csv.display());
    drop((kept, sink));
    drop(subject);
    if code == 0 {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("router logs kept in {}", dir.display());
    }
    Ok(code)
}

/// The baseline as the "previous sample" of the first one, at time zero.
fn zero_at(base: &Sample) -> Sample {
    Sample {
        t: -2.0,
        ..base.clone()
    }
}

fn progress(s: &Sample) {
    let m = s.m.unwrap_or_default();
    println!(
        "t={:>6.0}s  RSS {:>7.1} MiB  fds {:>4}  threads {:>3}  peers {:>3}  routes {:>5}  queued {:>8} B  ctl {:>8} B  CPU {:.2} vCPU  load {:.2}",
        s.t,
        s.rss_kib as f64 / 1024.0,
        s.fds,
        s.threads,
        m.peers,
        m.routes,
        m.queued,
        m.ctl_queued,
        s.vcpus,
        s.load1
    );
}

/// Waits for `f` to give `Some`, checking the routers meanwhile.
fn wait_for<T>(
    what: &str,
    limit: Duration,
    subject: &mut Subject,
    f: impl FnMut() -> Option<T>,
) -> Result<T> {
    let every = Duration::from_millis(100);
    match sys::poll_until(limit, every, || subject.check(), f)? {
        Some(v) => Ok(v),
        None => bail!("no {what} within {limit:?}"),
    }
}

/// Polls the metrics page 4 times a second for the frozen peers.
fn watcher(ctx: &Ctx, stop: &AtomicBool) {
    while !stop.load(Relaxed) {
        if let Ok(p) = sys::http_get(ctx.metrics, "/metrics", Duration::from_secs(2))
            && let Ok(mut page) = ctx.watch.page.lock()
        {
            *page = Some((Instant::now(), p));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One churn slot: a peer from a fresh address announces a prefix set, stays 0.5-10 s and
/// goes, closing its link or freezing (then the router must find it dead); again.
fn churn_slot(ctx: &Ctx, slot: usize) {
    let mut rng = Rng::new(ctx.seed ^ (slot as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    // Spread the first arrivals over the first second.
    if !ctx.sleep(Duration::from_secs_f64(rng.range(0.0, 1.0))) {
        return;
    }
    while !ctx.stopped() {
        let idx = {
            let Ok(mut free) = ctx.free.lock() else {
                return;
            };
            if free.is_empty() {
                None
            } else {
                let i = rng.below(free.len());
                Some(free.swap_remove(i))
            }
        };
        let Some(idx) = idx else {
            ctx.sleep(Duration::from_millis(100));
            continue;
        };
        let from = ctx.fresh_addr();
        churn_once(ctx, &mut rng, from, &ctx.pool[idx]);
        if let Ok(mut free) = ctx.free.lock() {
            free.push(idx);
        }
    }
}

fn churn_once(ctx: &Ctx, rng: &mut Rng, from: IpAddr, prefixes: &Arc<Prefixes>) {
    let st = &ctx.stats;
    let peer = match fake_peer::tcp::dial_from(prefixes.clone(), ctx.tcp, Some(from)) {
        Ok(p) => p,
        Err(e) => {
            st.churn_no_link.fetch_add(1, Relaxed);
            st.note(format!("churn peer from {from}: {e:#}"));
            ctx.sleep(Duration::from_millis(200));
            return;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while peer.counters.links_up.load(Relaxed) == 0 {
        if Instant::now() > deadline {
            st.churn_no_link.fetch_add(1, Relaxed);
            st.note(format!("churn peer from {from}: no link within 5 s"));
            return;
        }
        if !ctx.sleep(Duration::from_millis(20)) {
            return;
        }
    }
    st.churn_links.fetch_add(1, Relaxed);
    let port = peer.counters.ports().first().copied().unwrap_or(0);
    let ep = format!("tcp://{from}:{port}");
    if !ctx.sleep(Duration::from_secs_f64(rng.range(0.5, 10.0))) {
        return;
    }
    if rng.next() & 1 == 0 {
        st.churn_closed.fetch_add(1, Relaxed);
        return; // dropping the peer closes its link
    }
    st.churn_frozen.fetch_add(1, Relaxed);
    // Seen on a page fetched while it was alive: the label is right, so its absence later means
    // the router closed it.
    let alive_at = Instant::now() - Duration::from_millis(2000);
    let seen = ctx.watch.has_endpoint(&ep, alive_at) == Some(true);
    if peer.freeze().is_err() {
        return;
    }
    let frozen_at = Instant::now();
    let limit = Duration::from_secs(10);
    loop {
        if ctx.stopped() {
            return;
        }
        if ctx.watch.has_endpoint(&ep, frozen_at) == Some(false) {
            if seen {
                st.frozen_dropped.fetch_add(1, Relaxed);
                if let Ok(mut v) = st.frozen_ms.lock() {
                    v.push(frozen_at.elapsed().as_millis() as u64);
                }
            } else {
                st.frozen_unseen.fetch_add(1, Relaxed);
            }
            return;
        }
        if frozen_at.elapsed() > limit {
            st.frozen_kept.fetch_add(1, Relaxed);
            st.note(format!("frozen peer {ep} still linked after {limit:?}"));
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The route flood: every prefix announced with a new seqno, held half a period, retracted,
/// held half a period; again.
fn flood_loop(ctx: &Ctx, flood: &Peer, p: &Prefixes, period: f64) {
    if period <= 0.0 {
        return ctx.idle();
    }
    let half = Duration::from_secs_f64((period / 2.0).max(0.1));
    let send = |seqno: u16, metric: Metric| {
        if let Err(e) = flood.send_control(&p.updates(SeqNo(seqno), metric)) {
            ctx.stats.flood_errors.fetch_add(1, Relaxed);
            ctx.stats.note(format!("flood: {e:#}"));
        }
    };
    let mut seqno = 1u16;
    'cycles: while !ctx.stopped() {
        for metric in [Metric(0), Metric::INFINITE] {
            send(seqno, metric);
            if !ctx.sleep(half) {
                break 'cycles;
            }
        }
        seqno = seqno.wrapping_add(1);
        ctx.stats.flood_cycles.fetch_add(1, Relaxed);
    }
    // Every prefix announced again, as before the churn, so the router ends in that state.
    send(seqno.wrapping_add(1), Metric(0));
}

/// Transit: `rate` frames/s to the sink in batches every 50 ms, and once a second a frame to
/// each of `wander` (churn peers' and flood prefixes: routed, retracted or unknown by turns).
fn transit_loop(
    ctx: &Ctx,
    sender: &Peer,
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    wander: &[std::net::Ipv6Addr],
    rate: u64,
) {
    if rate == 0 {
        return ctx.idle();
    }
    let per_batch = (rate / 20).max(1) as usize;
    let batch = match FrameSet::new(src, &vec![dst; per_batch], FRAME, None) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            ctx.stats.note(format!("transit: {e:#}"));
            return;
        }
    };
    let wander = FrameSet::new(src, wander, FRAME, None).ok().map(Arc::new);
    let step = Duration::from_millis(50);
    let mut next = Instant::now();
    let mut n = 0u64;
    while !ctx.stopped() {
        let r = sender.generator.send_once(batch.clone(), STALL);
        record_send(ctx, &ctx.stats.transit_sent, r);
        if n.is_multiple_of(20)
            && let Some(w) = &wander
        {
            let r = sender.generator.send_once(w.clone(), STALL);
            record_send(ctx, &ctx.stats.wander_sent, r);
        }
        n += 1;
        next += step;
        let now = Instant::now();
        if next < now {
            next = now; // behind: no catching up in a burst
        }
        ctx.sleep(next - now);
    }
}

fn record_send(ctx: &Ctx, sent: &AtomicU64, r: Result<fake_peer::GenReport>) {
    match r {
        Ok(r) => {
            sent.fetch_add(r.sent, Relaxed);
            if let Some(e) = r.error {
                ctx.stats.transit_errors.fetch_add(1, Relaxed);
                ctx.stats.note(format!("transit: {e}"));
            }
        }
        Err(e) => {
            ctx.stats.transit_errors.fetch_add(1, Relaxed);
            ctx.stats.note(format!("transit: {e:#}"));
        }
    }
}

/// Sends a push and waits for its answer: with `reply_ms`, the reply (`Ok(true)`); without, the
/// router's acceptance (`Ok(true)`). `Ok(false)` when the router answers with an error.
fn request(
    app: &mut App,
    tag: u64,
    dst: &PublicKey,
    payload: &[u8],
    reply_ms: Option<u32>,
) -> Result<bool> {
    app.send(&Message::Push(Push {
        tag,
        dst: Destination::PublicKey(*dst.as_bytes()),
        topic: TOPIC,
        payload,
        reply_to: None,
        reply_timeout_ms: reply_ms,
    }))?;
    loop {
        let (kind, body) = app.recv()?;
        match Message::decode(kind, &body) {
            Ok(Message::Deliver(d)) if reply_ms.is_some() && d.reply_tag == Some(tag) => {
                return Ok(true);
            }
            Ok(Message::Pushed(p)) if reply_ms.is_none() && p.tag == tag => return Ok(true),
            Ok(Message::Error(ErrorMsg { tag: t, .. })) if t == tag => return Ok(false),
            _ => {}
        }
    }
}

/// Messages on the local socket: request/reply to the far end at `rate` per second, and every
/// fifth tick a one-way push to a churn peer's key (which never answers, and may be gone). The
/// connection is replaced every 5-15 s.
fn local_loop(ctx: &Ctx, rate: f64) {
    if rate <= 0.0 {
        return ctx.idle();
    }
    let st = &ctx.stats;
    let mut rng = Rng::new(ctx.seed ^ 0x10ca1);
    let payload = vec![0x5au8; 1024];
    let step = Duration::from_secs_f64(1.0 / rate);
    let mut tag = 0u64;
    while !ctx.stopped() {
        let mut app = match App::connect(&ctx.sock) {
            Ok(a) => a,
            Err(e) => {
                st.msgs_failed.fetch_add(1, Relaxed);
                st.note(format!("local socket: {e:#}"));
                ctx.sleep(Duration::from_secs(1));
                continue;
            }
        };
        st.local_connections.fetch_add(1, Relaxed);
        let _ = app.set_read_timeout(Some(Duration::from_secs(10)));
        let end = Instant::now() + Duration::from_secs_f64(rng.range(5.0, 15.0));
        while !ctx.stopped() && Instant::now() < end {
            tag += 1;
            match request(&mut app, tag, &ctx.far_pk, &payload, Some(5000)) {
                Ok(true) => st.msgs_ok.fetch_add(1, Relaxed),
                Ok(false) => st.msgs_failed.fetch_add(1, Relaxed),
                Err(e) => {
                    st.msgs_failed.fetch_add(1, Relaxed);
                    st.note(format!("local socket request: {e:#}"));
                    break;
                }
            };
            if tag.is_multiple_of(5) {
                tag += 1;
                let p = &ctx.pool[rng.below(ctx.pool.len())];
                let dst = p.key(rng.below(p.len()));
                match request(&mut app, tag, &dst, &payload, None) {
                    Ok(true) => st.oneway_ok.fetch_add(1, Relaxed),
                    Ok(false) => st.oneway_failed.fetch_add(1, Relaxed),
                    Err(e) => {
                        st.oneway_failed.fetch_add(1, Relaxed);
                        st.note(format!("local socket one-way push: {e:#}"));
                        break;
                    }
                };
            }
            ctx.sleep(step);
        }
    }
}

/// Messages through the HTTP API (a connection each): pushes to the far end waiting for the
/// reply, at `rate` per second.
fn http_loop(ctx: &Ctx, rate: f64) {
    if rate <= 0.0 {
        return ctx.idle();
    }
    let st = &ctx.stats;
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = serde_json::json!({
        "dst": {"pk": ctx.far_pk.to_string()},
        "topic": b64.encode(TOPIC),
        "payload": b64.encode(vec![0x33u8; 1024]),
    })
    .to_string();
    let step = Duration::from_secs_f64(1.0 / rate);
    while !ctx.stopped() {
        match sys::http_post(
            ctx.api,
            "/api/v1/messages?reply_timeout=5",
            &body,
            Duration::from_secs(10),
        ) {
            Ok((200, _)) => st.http_ok.fetch_add(1, Relaxed),
            Ok((code, text)) => {
                st.note(format!("HTTP push: {code} {}", text.trim()));
                st.http_failed.fetch_add(1, Relaxed)
            }
            Err(e) => {
                st.note(format!("HTTP push: {e:#}"));
                st.http_failed.fetch_add(1, Relaxed)
            }
        };
        ctx.sleep(step);
    }
}

/// Every `every` seconds, 12 links at once from one fresh address (the router admits 8 per
/// address by default and closes the rest at once); they say nothing and go after 2 s.
fn burst_loop(ctx: &Ctx, every: f64) {
    if every <= 0.0 {
        return ctx.idle();
    }
    let st = &ctx.stats;
    let every = Duration::from_secs_f64(every);
    while ctx.sleep(every) {
        let from = ctx.fresh_addr();
        let links: Vec<_> = (0..12)
            .filter_map(|_| sys::connect_from(from, ctx.tcp, Duration::from_secs(2)).ok())
            .collect();
        st.bursts.fetch_add(1, Relaxed);
        st.burst_links.fetch_add(links.len() as u64, Relaxed);
        std::thread::sleep(Duration::from_secs(2));
        drop(links);
    }
}

/// Prints the summary and verdicts; the exit code (2: a clear descriptor leak).
#[allow(clippy::too_many_arguments)]
fn summary(
    args: &Args,
    base: &Sample,
    samples: &[Sample],
    churn_s: f64,
    settled: Option<f64>,
    st: &Stats,
    subject: &Subject,
    base_page: &str,
) -> i32 {
    let run: Vec<&Sample> = samples.iter().filter(|s| s.phase == "run").collect();
    let settle: Vec<&Sample> = samples.iter().filter(|s| s.phase == "settle").collect();
    let (Some(first), Some(last_run), Some(end)) = (run.first(), run.last(), settle.last()) else {
        println!("no samples");
        return 1;
    };
    let mib = |k: u64| k as f64 / 1024.0;
    let warm = (churn_s / 12.0).min(300.0);
    let at_warm = run
        .iter()
        .min_by(|a, b| (a.t - warm).abs().total_cmp(&(b.t - warm).abs()))
        .copied()
        .unwrap_or(first);
    let after: Vec<&Sample> = run.iter().copied().filter(|s| s.t >= at_warm.t).collect();
    let max_after = after.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let min_after = after.iter().map(|s| s.rss_kib).min().unwrap_or(0);
    // How far `to` is above `from`, in per cent.
    let rise = |to: f64, from: f64| (to / from.max(1.0) - 1.0) * 100.0;
    let growth = rise(max_after as f64, at_warm.rss_kib as f64);
    let rss_slope = slope(&after, |s| s.rss_kib as f64 / 1024.0) * 3600.0;
    // The same by the minute (the mean of each minute's samples), which separates the trend
    // from the swings between single samples; reported beside the verdict, not instead of it.
    let window = (warm / 5.0).max(1.0);
    let mean_over = |from: f64, to: f64| {
        let v: Vec<f64> = run
            .iter()
            .filter(|s| s.t > from && s.t <= to)
            .map(|s| s.rss_kib as f64)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let level = mean_over(at_warm.t - window, at_warm.t);
    let mut top_window = None::<f64>;
    let mut from = at_warm.t;
    while from < last_run.t {
        if let Some(m) = mean_over(from, from + window) {
            top_window = Some(top_window.map_or(m, |t| t.max(m)));
        }
        from += window;
    }
    let fd_slope = slope(&after, |s| s.fds as f64) * 3600.0;
    let fd_max = run.iter().map(|s| s.fds).max().unwrap_or(0);
    let thr_max = run.iter().map(|s| s.threads).max().unwrap_or(0);
    let excess = end.fds as i64 - base.fds as i64;
    let links = st.churn_links.load(Relaxed);
    let cpu_run = last_run.cpu_s - base.cpu_s;
    let idle: Vec<&Sample> = settle.iter().rev().take(3).copied().collect();
    let idle_vcpus = idle.iter().map(|s| s.vcpus).sum::<f64>() / idle.len().max(1) as f64;
    let q_max = run
        .iter()
        .filter_map(|s| s.m.map(|m| m.queued))
        .max()
        .unwrap_or(0);
    let cq_max = run
        .iter()
        .filter_map(|s| s.m.map(|m| m.ctl_queued))
        .max()
        .unwrap_or(0);
    let peers_max = run
        .iter()
        .filter_map(|s| s.m.map(|m| m.peers))
        .max()
        .unwrap_or(0);
    let m_end = end.m.unwrap_or_default();
    let m_base = base.m.unwrap_or_default();
    let load: Vec<f64> = run.iter().map(|s| s.load1).collect();
    let load_avg = load.iter().sum::<f64>() / load.len().max(1) as f64;
    let load_max = load.iter().copied().fold(0.0, f64::max);

    println!();
    println!("== soak summary: {churn_s:.0} s of churn ==");
    let frozen_ms = st.frozen_ms.lock().map(|v| v.clone()).unwrap_or_default();
    let (fz_med, fz_max) = median_max(&frozen_ms);
    println!(
        "churn: {links} peer links ({} closed by the peer, {} frozen: {} closed by the router's dead-peer detection in {:.1} s median, {:.1} s max (polled every 0.25 s), {} still linked after 10 s, {} not judged); {} peers got no link",
        st.churn_closed.load(Relaxed),
        st.churn_frozen.load(Relaxed),
        st.frozen_dropped.load(Relaxed),
        fz_med as f64 / 1000.0,
        fz_max as f64 / 1000.0,
        st.frozen_kept.load(Relaxed),
        st.frozen_unseen.load(Relaxed),
        st.churn_no_link.load(Relaxed),
    );
    println!(
        "route flood: {} cycles of {} Updates and as many retractions ({} send errors); bursts: {} of 12 links from one address ({} connected, {} refused by the router in all)",
        st.flood_cycles.load(Relaxed),
        args.flood_routes,
        st.flood_errors.load(Relaxed),
        st.bursts.load(Relaxed),
        st.burst_links.load(Relaxed),
        m_end.refused.saturating_sub(m_base.refused),
    );
    let sent = st.transit_sent.load(Relaxed);
    let delivered = end.transit_delivered;
    println!(
        "transit: {sent} frames sent to the sink, {delivered} delivered ({:.3} %), {} to churn and flood prefixes; {} send errors",
        if sent > 0 {
            delivered as f64 * 100.0 / sent as f64
        } else {
            0.0
        },
        st.wander_sent.load(Relaxed),
        st.transit_errors.load(Relaxed),
    );
    println!(
        "messages: local socket {} replied / {} failed over {} connections; one-way to churn keys {} accepted / {} refused or failed; HTTP API {} replied / {} failed",
        st.msgs_ok.load(Relaxed),
        st.msgs_failed.load(Relaxed),
        st.local_connections.load(Relaxed),
        st.oneway_ok.load(Relaxed),
        st.oneway_failed.load(Relaxed),
        st.http_ok.load(Relaxed),
        st.http_failed.load(Relaxed),
    );
    println!(
        "RSS: {:.1} MiB at the baseline, {:.1} MiB at {:.0} s (warm-up end), after it max {:.1} MiB ({growth:+.1} %), min {:.1} MiB, last {:.1} MiB; trend after the warm-up {rss_slope:+.2} MiB/h",
        mib(base.rss_kib),
        mib(at_warm.rss_kib),
        at_warm.t,
        mib(max_after),
        mib(min_after),
        mib(last_run.rss_kib),
    );
    // Where the rise is: the router's own memory or pages of its binary touched for the first
    // time (code paths that run only now and then).
    let anon_max = after.iter().map(|s| s.anon_kib).max().unwrap_or(0);
    let file_max = after.iter().map(|s| s.file_kib).max().unwrap_or(0);
    println!(
        "RSS in parts: anonymous {:.1} MiB at the warm-up end, max {:.1} MiB after it ({:+.1} %); file-backed {:.1} MiB, max {:.1} MiB",
        mib(at_warm.anon_kib),
        mib(anon_max),
        rise(anon_max as f64, at_warm.anon_kib as f64),
        mib(at_warm.file_kib),
        mib(file_max),
    );
    if let (Some(level), Some(top)) = (level, top_window) {
        println!(
            "RSS by {window:.0} s windows (mean of their samples): {:.1} MiB in the one before the warm-up end, highest after it {:.1} MiB ({:+.1} %)",
            level / 1024.0,
            top / 1024.0,
            rise(top, level),
        );
    }
    println!(
        "descriptors: {} at the baseline, max {fd_max} during the churn (trend {fd_slope:+.1}/h after the warm-up), {} after the churn stopped{}; threads {} -> max {thr_max} -> {}",
        base.fds,
        end.fds,
        match settled {
            Some(s) => format!(" (back within {s:.0} s)"),
            None => format!(" (not back within {:.0} s)", args.settle),
        },
        base.threads,
        end.threads,
    );
    println!(
        "queues: queued bytes over peers max {q_max} B, control queued max {cq_max} B, {} B and {} B at the end; peers max {peers_max}, {} at the end ({} at the baseline); drops {} during the run",
        m_end.queued,
        m_end.ctl_queued,
        m_end.peers,
        m_base.peers,
        m_end.drops.saturating_sub(m_base.drops),
    );
    println!(
        "CPU: the router used {cpu_run:.1} CPU-s in {churn_s:.0} s ({:.2} vCPUs on average), {idle_vcpus:.3} vCPUs once idle; far end {:.1} CPU-s; machine load average {load_avg:.2} on average, {load_max:.2} max",
        cpu_run / churn_s.max(1e-9),
        subject.far.cpu_seconds(),
    );
    let end_page =
        sys::http_get(subject.metrics, "/metrics", Duration::from_secs(5)).unwrap_or_default();
    let before = drops_by_reason(base_page);
    let reasons: Vec<String> = drops_by_reason(&end_page)
        .into_iter()
        .filter_map(|(r, n)| {
            let b = before.iter().find(|(x, _)| *x == r).map_or(0, |(_, b)| *b);
            (n > b).then(|| format!("{r} {}", n - b))
        })
        .collect();
    println!(
        "drops by reason over the run: {}",
        if reasons.is_empty() {
            "none".to_owned()
        } else {
            reasons.join(", ")
        }
    );
    if let Ok(notes) = st.notes.lock()
        && !notes.is_empty()
    {
        println!("notes (first {}):", notes.len());
        for n in notes.iter() {
            println!("  {n}");
        }
    }
    plot(&run, churn_s);

    let rss_met = growth <= 10.0;
    let fd_met = excess <= FD_TOLERANCE;
    println!();
    println!(
        "verdict: RSS within 10 % of its level after the warm-up ({:.1} MiB at {:.0} s, max after {:.1} MiB, {growth:+.1} %): {}",
        mib(at_warm.rss_kib),
        at_warm.t,
        mib(max_after),
        if rss_met { "met" } else { "not met" }
    );
    println!(
        "verdict: descriptors back to the baseline after the churn ({} before, {} after, tolerance {FD_TOLERANCE}): {}",
        base.fds,
        end.fds,
        if fd_met { "met" } else { "not met" }
    );
    // A clear leak: many descriptors kept, in proportion to the links that churned.
    let clear_leak = excess >= (links as i64 / 10).max(16);
    if clear_leak {
        println!(
            "FAIL: {excess} descriptors more than before the churn after {links} churn links: descriptors leak"
        );
        return 2;
    }
    0
}

/// Least-squares slope of `f` over time, per second.
fn slope(s: &[&Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    let n = s.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mt, mv) = (
        s.iter().map(|x| x.t).sum::<f64>() / n,
        s.iter().map(|x| f(x)).sum::<f64>() / n,
    );
    let cov: f64 = s.iter().map(|x| (x.t - mt) * (f(x) - mv)).sum();
    let var: f64 = s.iter().map(|x| (x.t - mt).powi(2)).sum();
    if var > 0.0 { cov / var } else { 0.0 }
}

fn median_max(v: &[u64]) -> (u64, u64) {
    let mut v = v.to_vec();
    v.sort_unstable();
    (
        v.get(v.len() / 2).copied().unwrap_or(0),
        v.last().copied().unwrap_or(0),
    )
}

/// A table at twelfths of the run (5 min steps for an hour) and one sparkline per figure.
fn plot(run: &[&Sample], seconds: f64) {
    println!();
    println!(
        "| t | RSS MiB | descriptors | threads | peers | routes | queued KiB | control queued KiB | router vCPUs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let step = seconds / 12.0;
    for k in 0..=12 {
        let t = k as f64 * step;
        let Some(s) = run
            .iter()
            .min_by(|a, b| (a.t - t).abs().total_cmp(&(b.t - t).abs()))
        else {
            continue;
        };
        // CPU: the average over the step before this point.
        let from = run
            .iter()
            .min_by(|a, b| {
                (a.t - (t - step))
                    .abs()
                    .total_cmp(&(b.t - (t - step)).abs())
            })
            .copied()
            .unwrap_or(s);
        let vcpus = if s.t > from.t {
            (s.cpu_s - from.cpu_s) / (s.t - from.t)
        } else {
            s.vcpus
        };
        let m = s.m.unwrap_or_default();
        println!(
            "| {} | {:.1} | {} | {} | {} | {} | {:.1} | {:.1} | {:.2} |",
            clock(s.t),
            s.rss_kib as f64 / 1024.0,
            s.fds,
            s.threads,
            m.peers,
            m.routes,
            m.queued as f64 / 1024.0,
            m.ctl_queued as f64 / 1024.0,
            vcpus
        );
    }
    println!();
    let cols = 60.min(run.len());
    if cols < 2 {
        return;
    }
    type Get = fn(&Sample) -> f64;
    let rows: [(&str, Get); 4] = [
        ("RSS MiB", |s| s.rss_kib as f64 / 1024.0),
        ("descriptors", |s| s.fds as f64),
        ("queued KiB", |s| {
            s.m.map_or(0.0, |m| (m.queued + m.ctl_queued) as f64 / 1024.0)
        }),
        ("peers", |s| s.m.map_or(0.0, |m| m.peers as f64)),
    ];
    for (name, f) in rows {
        // Each column: the maximum over its share of the samples.
        let vals: Vec<f64> = (0..cols)
            .map(|c| {
                let (a, b) = (
                    c * run.len() / cols,
                    ((c + 1) * run.len() / cols).max(c * run.len() / cols + 1),
                );
                run[a..b].iter().map(|s| f(s)).fold(f64::MIN, f64::max)
            })
            .collect();
        let (lo, hi) = vals
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
        let line: String = vals
            .iter()
            .map(|v| {
                if hi > lo {
                    BARS[(((v - lo) / (hi - lo)) * 7.0).round() as usize]
                } else {
                    BARS[0]
                }
            })
            .collect();
        println!("{name:>12} {line}  {lo:.1} .. {hi:.1}");
    }
    println!(
        "{:>12} 0 {:>width$}",
        "time",
        clock(run.last().map_or(0.0, |s| s.t)),
        width = cols - 1
    );
}

fn clock(t: f64) -> String {
    let t = t.max(0.0).round() as u64;
    format!("{}:{:02}", t / 60, t % 60)
}
