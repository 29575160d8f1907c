//! TUN benchmark: TCP throughput and ping round trip between two nodes' TUN devices, each node
//! in its own network namespace, hyphae-router against stock mycelium 0.7.10.
//!
//! ```text
//! cargo build --release -p hyphae-router -p hyphae-bench
//! target/release/tunbench --rounds 5 --wait-quiet 300
//! target/release/tunbench --quick          # CI smoke run: 1 round each, 1 s of iperf3, 10 pings
//! ```
//!
//! Every pair is built fresh: two network namespaces (loopback up) joined by a veth pair with
//! ULA addresses (`fd00:7b::1/64` and `::2`, `nodad`), a node in each with its TUN device
//! `hyb0`, the second dialing the first over TCP on the veth, peer discovery off. The nodes run
//! as each runs by default (hyphae with a worker per vCPU unless `--workers`, stock with its
//! tokio runtime's default). Each node's overlay address is read from its TUN (the global
//! address with prefix length 7). Once a ping from A to B's overlay address answers (within
//! 20 s), the round measures:
//!
//! 1. `ping -6 -n -c 500 -i 0.02 -W 2` from A to B: min, average, median, 99th percentile and max round trip
//!    from the per-packet lines, and replies received;
//! 2. `iperf3 -s -1` in B's namespace, `iperf3 -c B -t 5 -J` in A's: bits per second received
//!    (`end.sum_received`), the sender's retransmits (`end.sum_sent`) and its TCP's mean
//!    smoothed RTT under load, with each node's CPU seconds over the run (`/proc/PID/stat`; `ip
//!    netns exec` execs the node, so the child's pid is the node's), the whole machine's busy
//!    and softirq time (`/proc/stat`), packets the TUN devices dropped (`ip -s link`) and, for
//!    hyphae, the frames each node dropped by reason (`hyphae_drop_*_total` on its metrics page,
//!    fetched inside the namespace by this binary's hidden `--http-get`).
//!
//! `--rounds` rounds each run a hyphae pair and then a stock pair, so both see the same state of
//! a shared machine. Before each pair the run waits up to `--wait-quiet` seconds for other work
//! below 10 % of a vCPU; a pair during whose iperf3 run other work took more than that (the
//! machine's busy time less the nodes', iperf3's and softirq time) is redone, up to `--retries`
//! times. The summary gives each figure as the median over rounds with the lowest and
//! highest round, and hyphae over stock as the median of the per-round ratios with their
//! spread. A difference is shown when the two sides' ranges lie apart, or, the rounds being
//! paired (each round runs both pairs on the same state of the machine), when every one of at
//! least five rounds puts hyphae on the same side (as `transit` judges its ratios; five of five
//! by chance is 1 in 32). Otherwise it is inside the run-to-run noise and is printed as
//! *inconclusive* with its spread, never as a number. The goals (throughput at least 2x
//! stock's, ping round trip no higher than stock's) are then met, not met, inconclusive, or not
//! shown (no stock pair measured).
//!
//! Namespaces are named `tunbench-<pid>-...`; nodes are killed and namespaces deleted when a
//! pair ends, also on error, and a run first deletes those left behind by runs that died.
//! Needs root, `ip` and `ss` (iproute2), `ping` and `iperf3`.

// `transit`'s figures over rounds and per-round ratios; its added-latency type is not used here.
#[allow(dead_code)]
#[path = "transit/stats.rs"]
mod stats;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hyphae_bench::sys::{self, Proc};
use serde_json::Value;

use crate::stats::{MIN_ROUNDS_FOR_ADDED, Ratio, Spread};

#[derive(Parser, Debug)]
#[command(about = "TCP throughput and ping between two nodes' TUNs in network namespaces")]
struct Args {
    /// The hyphae router binary (default: `hyphae-router` next to this one).
    #[arg(long)]
    router: Option<PathBuf>,
    /// Stock mycelium binary (default: $HYPHAE_STOCK_MYCELIUM, else
    /// ../shared/bin/mycelium-0.7.10 beside the work tree; skipped when that is absent).
    #[arg(long)]
    stock: Option<PathBuf>,
    /// Passed to hyphae as --workers (default: hyphae's own, one per vCPU).
    #[arg(long)]
    workers: Option<usize>,
    /// Passed to hyphae as --driver: auto, uring or portable (default: hyphae's own).
    #[arg(long)]
    driver: Option<String>,
    /// Rounds; each runs a hyphae pair, then a stock pair.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of each iperf3 run (whole seconds, as iperf3 takes them).
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Pings per round (sent every 20 ms). Enough that one slow reply of a few ms, which
    /// either kind sees now and then on a virtual machine, moves the average little.
    #[arg(long, default_value_t = 500)]
    pings: u32,
    /// CI smoke run: 1 round, 1 s of iperf3, 10 pings, no retries; no goal is judged.
    #[arg(long)]
    quick: bool,
    /// Before each pair, wait up to this many seconds for a quiet machine (other work below
    /// 10 % of one vCPU over a second); 0 only reports how busy it is.
    #[arg(long, default_value_t = 0.0)]
    wait_quiet: f64,
    /// Times a pair is redone when other work took more than 10 % of a vCPU during its iperf3
    /// run (estimated: the machine's busy time less the nodes', iperf3's and softirq time).
    #[arg(long, default_value_t = 3)]
    retries: usize,
    /// Internal: print the body of `GET http://ADDR/PATH` and exit (run inside a namespace
    /// to read a node's metrics page).
    #[arg(long, hide = true, value_name = "ADDR/PATH")]
    http_get: Option<String>,
}

/// Namespaces (and the scratch directory) of a run are `tunbench-<pid>...`.
const PREFIX: &str = "tunbench-";
/// Each node's TUN device.
const TUN: &str = "hyb0";
/// The TCP and QUIC port of every node, inside its namespace.
const PEER_PORT: u16 = 9651;
/// The veth's /64: A holds `::1`, B `::2`.
const VETH_NET: &str = "fd00:7b";
/// How long a node may take to put its address on its TUN.
const READY: Duration = Duration::from_secs(15);
/// How long a ping from A to B may take to answer at first (links and routes come up).
const REACH: Duration = Duration::from_secs(20);
/// The throughput goal: hyphae at least this many times stock's.
const GOAL_RATIO: f64 = 2.0;
/// The busy share of a vCPU below which the machine counts as quiet.
const QUIET_VCPU: f64 = 0.1;
/// hyphae's Prometheus page, inside its namespace.
const METRICS: &str = "127.0.0.1:8991";

/// Which node a pair runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Hyphae,
    Stock,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Hyphae => "hyphae",
            Self::Stock => "stock",
        }
    }
}

/// The binaries and settings every pair is started with.
#[derive(Debug)]
struct Setup {
    hyphae: PathBuf,
    stock: Option<PathBuf>,
    workers: Option<usize>,
    driver: Option<String>,
    seconds: u32,
    pings: u32,
    dir: PathBuf,
}

fn main() {
    let mut args = Args::parse();
    if let Some(target) = &args.http_get {
        match http_get(target) {
            Ok(body) => print!("{body}"),
            Err(e) => {
                eprintln!("tunbench: GET {target}: {e:#}");
                std::process::exit(1);
            }
        }
        return;
    }
    if args.quick {
        args.rounds = 1;
        args.seconds = 1;
        args.pings = 10;
        args.retries = 0;
    }
    if let Err(e) = run(&args) {
        eprintln!("tunbench: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    preflight()?;
    let exe = std::env::current_exe()?;
    let hyphae = args
        .router
        .clone()
        .unwrap_or_else(|| exe.with_file_name("hyphae-router"));
    if !hyphae.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p hyphae-router) or pass --router",
            hyphae.display()
        );
    }
    let (stock, no_stock) = stock_binary(args, &exe)?;
    sweep_leftovers();
    let dir = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let setup = Setup {
        hyphae,
        stock,
        workers: args.workers,
        driver: args.driver.clone(),
        seconds: args.seconds.max(1),
        pings: args.pings.max(1),
        dir: dir.clone(),
    };
    let result = bench(args, &setup, no_stock.as_deref());
    match &result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(_) => eprintln!("tunbench: nodes' logs kept in {}", dir.display()),
    }
    result
}

/// `GET http://ADDR/PATH`: the body of a 200 answer, within 5 s.
fn http_get(target: &str) -> Result<String> {
    let (addr, path) = target.split_once('/').context("not ADDR/PATH")?;
    sys::http_get(addr.parse()?, &format!("/{path}"), Duration::from_secs(5))
}

/// One clear line when something the benchmark needs is missing.
fn preflight() -> Result<()> {
    // The effective uid: the second field of `Uid:` in /proc/self/status.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1));
    if euid != Some("0") {
        bail!("needs root (network namespaces, veth pairs and TUN devices): run it as root");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (tool, package) in [
        ("ip", "iproute2"),
        ("ss", "iproute2"),
        ("ping", "iputils-ping"),
        ("iperf3", "iperf3"),
    ] {
        if !std::env::split_paths(&path).any(|d| d.join(tool).is_file()) {
            bail!("needs `{tool}`, which is not in PATH (apt-get install {package})");
        }
    }
    Ok(())
}

/// The stock binary, or why there is none: `--stock` must exist; the defaults
/// ($HYPHAE_STOCK_MYCELIUM, else ../shared/bin/mycelium-0.7.10 beside the work tree this binary
/// was built in) are skipped with a message when absent.
fn stock_binary(args: &Args, exe: &Path) -> Result<(Option<PathBuf>, Option<String>)> {
    if let Some(p) = &args.stock {
        if !p.is_file() {
            bail!("stock mycelium binary {} not found (--stock)", p.display());
        }
        return Ok((Some(p.clone()), None));
    }
    let candidate = match std::env::var_os("HYPHAE_STOCK_MYCELIUM").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        // target/<profile>/tunbench -> the work tree -> ../shared/bin.
        None => exe.ancestors().nth(3).map_or_else(PathBuf::new, |tree| {
            tree.join("../shared/bin/mycelium-0.7.10")
        }),
    };
    if candidate.is_file() {
        return Ok((Some(candidate.canonicalize().unwrap_or(candidate)), None));
    }
    Ok((
        None,
        Some(format!(
            "stock mycelium not found at {} ($HYPHAE_STOCK_MYCELIUM or \
             ../shared/bin/mycelium-0.7.10; --stock PATH): stock pairs skipped, no goal judged",
            candidate.display()
        )),
    ))
}

/// Deletes the namespaces and scratch directories of earlier runs whose process is gone.
fn sweep_leftovers() {
    let dead = |name: &str| {
        name.strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| pid != std::process::id() && !tunbench_alive(pid))
    };
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| dead(n))
            .collect()
    };
    for name in names(Path::new("/var/run/netns")) {
        match ip(&["netns", "del", &name]) {
            Ok(_) => println!("removed namespace {name} left by an earlier run"),
            Err(e) => eprintln!("tunbench: {e}"),
        }
    }
    let tmp = std::env::temp_dir();
    for name in names(&tmp) {
        let _ = std::fs::remove_dir_all(tmp.join(name));
    }
}

/// Whether `pid` is a live `tunbench` (not a zombie waiting for its parent, nor another
/// program that got the pid since).
fn tunbench_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let comm = stat
        .split_once('(')
        .and_then(|(_, r)| r.rsplit_once(')'))
        .map(|(c, _)| c);
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().next());
    comm == Some("tunbench") && !matches!(state, Some("Z" | "X"))
}

fn bench(args: &Args, setup: &Setup, no_stock: Option<&str>) -> Result<()> {
    let command: Vec<String> = std::env::args().collect();
    println!("tunbench on {}", sys::Machine::here());
    println!("  command: {}", command.join(" "));
    println!("  load average (1 min) at the start: {:.2}", sys::loadavg());
    println!(
        "  hyphae: {} ({}; {}), {}, {}",
        setup.hyphae.display(),
        sys::version_of(&setup.hyphae).unwrap_or_else(|| "version unknown".into()),
        tree_commit(&setup.hyphae),
        setup.workers.map_or_else(
            || "its default workers".into(),
            |w| format!("--workers {w}")
        ),
        setup
            .driver
            .as_ref()
            .map_or_else(|| "its default driver".into(), |d| format!("--driver {d}"))
    );
    match (&setup.stock, no_stock) {
        (Some(p), _) => println!(
            "  stock: {} ({})",
            p.display(),
            sys::version_of(p).unwrap_or_else(|| "version unknown".into())
        ),
        (None, why) => println!("  stock: {}", why.unwrap_or("not measured")),
    }
    println!(
        "  each pair: namespaces A and B, veth {VETH_NET}::1 (A) -- {VETH_NET}::2 (B), TUN {TUN} \
         in each, B dials tcp://[{VETH_NET}::1]:{PEER_PORT}"
    );
    println!(
        "  ping:   ip netns exec A ping -6 -n -c {} -i 0.02 -W 2 <B's overlay address>",
        setup.pings
    );
    println!(
        "  iperf3: ip netns exec B iperf3 -s -1; ip netns exec A iperf3 -c <B's overlay address> \
         -t {} -J",
        setup.seconds
    );
    if args.wait_quiet > 0.0 {
        println!(
            "  before each pair: wait up to {} s for other work below {:.0} % of a vCPU",
            args.wait_quiet,
            QUIET_VCPU * 100.0
        );
    }

    let mut kinds = vec![Kind::Hyphae];
    if setup.stock.is_some() {
        kinds.push(Kind::Stock);
    }
    let rounds = args.rounds.max(1);
    let mut runs: Vec<Run> = Vec::new();
    let (mut redone, mut kept_disturbed) = (0, 0);
    for round in 1..=rounds {
        for &kind in &kinds {
            let mut tries = 0;
            let run = loop {
                let quiet = wait_quiet(args.wait_quiet);
                let load = sys::loadavg();
                let mut run = pair(setup, kind, round)
                    .with_context(|| format!("round {round}/{rounds}, {} pair", kind.name()))?;
                run.before = Some(quiet);
                run.print(round, rounds, load);
                let other = run.other_vcpu();
                if other <= QUIET_VCPU {
                    break run;
                }
                if tries == args.retries {
                    println!(
                        "  (disturbed: other work ~{other:.2} vCPUs during iperf3; kept, no \
                         retries left)"
                    );
                    kept_disturbed += 1;
                    break run;
                }
                println!("  (disturbed: other work ~{other:.2} vCPUs during iperf3; redone)");
                tries += 1;
                redone += 1;
            };
            runs.push(run);
        }
    }
    println!();
    if args.retries > 0 || kept_disturbed > 0 {
        println!(
            "{redone} pair(s) redone because other work took more than {:.0} % of a vCPU during \
             iperf3; {kept_disturbed} disturbed pair(s) kept (--retries {})",
            QUIET_VCPU * 100.0,
            args.retries
        );
    }
    summarize(&runs, &kinds, rounds, setup, args.quick);
    Ok(())
}

/// The commit of the git work tree `bin` sits in, `+ uncommitted changes` when tracked files
/// differ from it (the binary may be older than the tree; this names its likeliest source).
fn tree_commit(bin: &Path) -> String {
    let dir = bin.parent().unwrap_or_else(|| Path::new("."));
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(c)
            if git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()) =>
        {
            format!("tree at {c} + uncommitted changes")
        }
        Some(c) => format!("tree at {c}"),
        None => "not in a git tree".into(),
    }
}

/// Other work on the machine when a wait for quiet ended.
#[derive(Clone, Copy, Debug)]
struct Quiet {
    /// vCPUs busy over the last second (this process slept: it is other work).
    other_vcpu: f64,
    /// Seconds waited before that second.
    waited_s: f64,
}

impl Quiet {
    fn show(self) -> String {
        let mut s = format!("other work {:.0} % of a vCPU", self.other_vcpu * 100.0);
        if self.waited_s >= 1.0 {
            let _ = write!(s, " after waiting {:.0} s", self.waited_s);
        }
        if self.other_vcpu >= QUIET_VCPU {
            s.push_str(" (busy)");
        }
        s
    }
}

/// Waits until other work takes under [`QUIET_VCPU`] of a vCPU over a second, at most `limit`
/// seconds (0: one second's look).
fn wait_quiet(limit: f64) -> Quiet {
    let start = Instant::now();
    loop {
        let waited_s = start.elapsed().as_secs_f64();
        let other_vcpu = busy_over_a_second();
        if other_vcpu < QUIET_VCPU || waited_s + 1.0 >= limit {
            return Quiet {
                other_vcpu,
                waited_s,
            };
        }
    }
}

/// vCPUs busy over the next second (this process sleeps meanwhile, so it is other work).
fn busy_over_a_second() -> f64 {
    let a = CpuTimes::now();
    std::thread::sleep(Duration::from_secs(1));
    CpuTimes::now().busy_since(&a)
}

/// The machine's CPU time so far, in seconds (the `cpu` line of `/proc/stat`).
#[derive(Clone, Copy, Debug, Default)]
struct CpuTimes {
    /// User, nice, system, irq and softirq time over all vCPUs.
    busy: f64,
    softirq: f64,
}

impl CpuTimes {
    fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0.0) / sys::clock_ticks_per_s();
        // user nice system idle iowait irq softirq steal ...
        Self {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            softirq: at(6),
        }
    }

    fn busy_since(&self, earlier: &Self) -> f64 {
        self.busy - earlier.busy
    }
}

/// What one pair measured.
#[derive(Debug)]
struct Run {
    kind: Kind,
    /// Seconds from starting the nodes until the first ping answered.
    reach_s: f64,
    ping: PingStats,
    iperf: Iperf,
    /// Each node's CPU seconds over the iperf3 run.
    node_cpu_s: [f64; 2],
    /// Wall seconds of the iperf3 client.
    wall_s: f64,
    /// vCPUs busy, and in softirq, machine-wide over the iperf3 run.
    busy_vcpu: f64,
    softirq_vcpu: f64,
    /// Packets each TUN device dropped during the iperf3 run (receive plus transmit).
    tun_drops: [u64; 2],
    /// Frames each hyphae node dropped during the iperf3 run, by reason (`hyphae_drop_*` on
    /// its metrics page; empty for stock, which has no such counters).
    node_drops: [BTreeMap<String, u64>; 2],
    /// Other work just before the pair started.
    before: Option<Quiet>,
}

impl Run {
    /// vCPUs busy with other work during the iperf3 run: the machine's busy time less softirq
    /// time, the nodes' and iperf3's (an estimate: iperf3 reports its own share).
    fn other_vcpu(&self) -> f64 {
        let nodes = (self.node_cpu_s[0] + self.node_cpu_s[1]) / self.wall_s;
        let iperf = (self.iperf.client_cpu_pct + self.iperf.server_cpu_pct) / 100.0;
        (self.busy_vcpu - self.softirq_vcpu - nodes - iperf).max(0.0)
    }

    fn print(&self, round: usize, rounds: usize, load: f64) {
        let p = &self.ping;
        let rtt = self.iperf.mean_rtt_us.map_or_else(String::new, |r| {
            format!(", sender's smoothed RTT {r:.0} us")
        });
        let drops = match self.kind {
            Kind::Hyphae => format!(
                "; router drops A {} B {}",
                show_drops(&self.node_drops[0]),
                show_drops(&self.node_drops[1])
            ),
            Kind::Stock => String::new(),
        };
        println!(
            "round {round}/{rounds} {:<6} (load {load:.2}, {}; first ping after {:.1} s): ping \
             {}/{} replies, min {:.3} avg {:.3} p50 {:.3} p99 {:.3} max {:.3} ms; iperf3 {:.2} Gbit/s \
             received, {} retransmits{rtt}; node CPU A {:.2} s B {:.2} s over \
             {:.1} s; machine {:.2} vCPUs busy ({:.2} softirq, other work ~{:.2}), iperf3 client \
             {:.0} % server {:.0} %; TUN drops A {} B {}{drops}",
            self.kind.name(),
            self.before
                .map_or_else(|| "other work not measured".into(), Quiet::show),
            self.reach_s,
            p.received,
            p.sent,
            p.min,
            p.avg,
            p.p50,
            p.p99,
            p.max,
            self.iperf.gbit_per_s,
            self.iperf.retransmits,
            self.node_cpu_s[0],
            self.node_cpu_s[1],
            self.wall_s,
            self.busy_vcpu,
            self.softirq_vcpu,
            self.other_vcpu(),
            self.iperf.client_cpu_pct,
            self.iperf.server_cpu_pct,
            self.tun_drops[0],
            self.tun_drops[1],
        );
    }
}

/// One round of one kind: a fresh pair in fresh namespaces, torn down on return.
fn pair(setup: &Setup, kind: Kind, round: usize) -> Result<Run> {
    let tag = format!("{}-r{round}-{}", std::process::id(), kind.name());
    let dir = setup.dir.join(&tag);
    std::fs::create_dir_all(&dir)?;
    // Dropped last (locals drop in reverse order): the namespaces outlive the nodes in them.
    let ns_a = Netns::new(&format!("{PREFIX}{tag}-a"))?;
    let ns_b = Netns::new(&format!("{PREFIX}{tag}-b"))?;
    let (veth_a, _) = veth(&ns_a, &ns_b)?;
    let started = Instant::now();
    let mut a = Node::start(setup, kind, &ns_a, &dir, "a", None)?;
    let listen = format!("tcp://[{veth_a}]:{PEER_PORT}");
    let mut b = Node::start(setup, kind, &ns_b, &dir, "b", Some(&listen))?;
    let a_addr = a.overlay_address()?;
    let b_addr = b.overlay_address()?;
    let dst = b_addr.to_string();

    // Links and routes come up: the first answered ping.
    loop {
        let out = ns_a
            .command("ping")
            .args(["-6", "-n", "-c", "1", "-W", "1", &dst])
            .stdin(Stdio::null())
            .output()
            .context("running ping")?;
        if out.status.success() {
            break;
        }
        a.proc.check()?;
        b.proc.check()?;
        if started.elapsed() > REACH {
            bail!(
                "no ping from A ({a_addr}) answered by B ({b_addr}) within {REACH:?}; logs in {}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let reach_s = started.elapsed().as_secs_f64();

    let pings = setup.pings.to_string();
    let out = run_for(
        ns_a.command("ping")
            .args(["-6", "-n", "-c", &pings, "-i", "0.02", "-W", "2", &dst]),
        Duration::from_secs_f64(f64::from(setup.pings) * 0.02 + 15.0),
        &dir.join("ping.out"),
    )?;
    let ping = PingStats::parse(&out.stdout)
        .with_context(|| format!("ping printed no round trips:\n{}{}", out.stdout, out.stderr))?;

    let _server = Proc::spawn(
        "iperf3 server",
        ns_b.command("iperf3").args(["-s", "-1"]),
        dir.join("iperf3-server.log"),
    )?;
    ns_b.wait_listening(5201, Duration::from_secs(10))?;
    let cpu0 = [a.cpu_seconds(), b.cpu_seconds()];
    let drops0 = [ns_a.tun_drops(), ns_b.tun_drops()];
    let node_drops0 = [a.drops(), b.drops()];
    let (machine0, t0) = (CpuTimes::now(), Instant::now());
    let secs = setup.seconds.to_string();
    let out = run_for(
        ns_a.command("iperf3").args(["-c", &dst, "-t", &secs, "-J"]),
        Duration::from_secs(u64::from(setup.seconds) + 30),
        &dir.join("iperf3-client.json"),
    )?;
    let wall_s = t0.elapsed().as_secs_f64();
    let machine1 = CpuTimes::now();
    let node_cpu_s = [a.cpu_seconds() - cpu0[0], b.cpu_seconds() - cpu0[1]];
    let drops1 = [ns_a.tun_drops(), ns_b.tun_drops()];
    let node_drops1 = [a.drops(), b.drops()];
    let iperf = Iperf::parse(&out.stdout).with_context(|| {
        format!(
            "iperf3 client ({}): {}",
            out.status,
            out.stderr.lines().next().unwrap_or("")
        )
    })?;
    a.proc.check()?;
    b.proc.check()?;
    Ok(Run {
        kind,
        reach_s,
        ping,
        iperf,
        node_cpu_s,
        wall_s,
        busy_vcpu: machine1.busy_since(&machine0) / wall_s,
        softirq_vcpu: (machine1.softirq - machine0.softirq) / wall_s,
        tun_drops: [
            drops1[0].saturating_sub(drops0[0]),
            drops1[1].saturating_sub(drops0[1]),
        ],
        node_drops: [
            counter_delta(&node_drops0[0], &node_drops1[0]),
            counter_delta(&node_drops0[1], &node_drops1[1]),
        ],
        before: None,
    })
}

/// A network namespace with its loopback up, deleted on drop.
#[derive(Debug)]
struct Netns {
    name: String,
}

impl Netns {
    fn new(name: &str) -> Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> args`: its standard output.
    fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ip -n <ns> -j args`, parsed.
    fn ip_json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        let out = self.ip(&all)?;
        serde_json::from_str(&out).with_context(|| format!("ip -j {}: {out}", args.join(" ")))
    }

    /// `ip netns exec <ns> program`: `ip` execs the program, so the child's pid is its own.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Waits until a TCP socket listens on `port` in the namespace (`ss`, which connects to
    /// nothing: a one-off iperf3 server would take a probe connection for its test).
    fn wait_listening(&self, port: u16, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let filter = format!("sport = :{port}");
        loop {
            let out = self
                .command("ss")
                .args(["-H", "-l", "-t", "-n", &filter])
                .stdin(Stdio::null())
                .output()
                .context("running ss")?;
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "nothing listens on port {port} in {} within {limit:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Packets the TUN device has dropped so far, received plus sent (0 if unreadable).
    fn tun_drops(&self) -> u64 {
        let Ok(v) = self.ip_json(&["-s", "link", "show", "dev", TUN]) else {
            return 0;
        };
        let s = &v[0]["stats64"];
        s["rx"]["dropped"].as_u64().unwrap_or(0) + s["tx"]["dropped"].as_u64().unwrap_or(0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("tunbench: {e:#}");
        }
    }
}

/// Joins `a` and `b` with a veth pair, `fd00:7b::1` in `a` and `::2` in `b` (no duplicate
/// address detection, so usable at once), and waits until both ends are up. The devices go
/// with the namespaces.
fn veth(a: &Netns, b: &Netns) -> Result<(Ipv6Addr, Ipv6Addr)> {
    let addrs: [Ipv6Addr; 2] = [
        format!("{VETH_NET}::1").parse()?,
        format!("{VETH_NET}::2").parse()?,
    ];
    ip(&[
        "link", "add", "tbv0", "netns", &a.name, "type", "veth", "peer", "name", "tbv0", "netns",
        &b.name,
    ])?;
    for (ns, addr) in [(a, addrs[0]), (b, addrs[1])] {
        ns.ip(&["addr", "add", &format!("{addr}/64"), "dev", "tbv0", "nodad"])?;
        ns.ip(&["link", "set", "tbv0", "up"])?;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for ns in [a, b] {
        while ns.ip_json(&["link", "show", "dev", "tbv0"])?[0]["operstate"] != "UP" {
            if Instant::now() > deadline {
                bail!("the veth in {} does not come up", ns.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok((addrs[0], addrs[1]))
}

/// A node running in a namespace, killed on drop (before its namespace is deleted).
#[derive(Debug)]
struct Node<'a> {
    kind: Kind,
    proc: Proc,
    ns: &'a Netns,
}

impl<'a> Node<'a> {
    /// Starts a `kind` node in `ns` with a fresh random key and TUN [`TUN`], dialing `peer`.
    fn start(
        setup: &Setup,
        kind: Kind,
        ns: &'a Netns,
        dir: &Path,
        name: &str,
        peer: Option<&str>,
    ) -> Result<Self> {
        let key = dir.join(format!("{name}.key"));
        let mut secret = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut secret))
            .context("reading /dev/urandom")?;
        std::fs::write(&key, secret).with_context(|| format!("writing {}", key.display()))?;
        let port = PEER_PORT.to_string();
        let mut cmd = match kind {
            Kind::Hyphae => {
                let mut c = ns.command(&setup.hyphae);
                c.arg("-k")
                    .arg(&key)
                    .args(["-t", &port, "-q", &port])
                    .args(["--api-addr", "127.0.0.1:8989", "--local-socket", "none"])
                    .args(["--metrics-api-address", METRICS])
                    .args(["--tun-name", TUN, "--disable-peer-discovery", "--silent"]);
                if let Some(w) = setup.workers {
                    c.args(["--workers", &w.to_string()]);
                }
                if let Some(d) = &setup.driver {
                    c.args(["--driver", d]);
                }
                if let Some(p) = peer {
                    c.args(["--peers", p]);
                }
                c
            }
            Kind::Stock => {
                let config = dir.join(format!("{name}.toml"));
                let peers = peer.map_or_else(String::new, |p| format!("{p:?}"));
                std::fs::write(&config, format!("peers = [{peers}]\n"))?;
                let mut c = ns.command(setup.stock.as_deref().context("no stock binary")?);
                c.arg("-k")
                    .arg(&key)
                    .arg("-c")
                    .arg(&config)
                    .args(["--tun-name", TUN, "--disable-peer-discovery"])
                    .args(["-t", &port, "-q", &port])
                    .args(["--api-addr", "127.0.0.1:8989"])
                    .args(["--jsonrpc-addr", "127.0.0.1:8990", "--silent"]);
                c
            }
        };
        let label = format!("{} node {name} in {}", kind.name(), ns.name);
        let proc = Proc::spawn(&label, &mut cmd, dir.join(format!("{name}.log")))?;
        Ok(Self { kind, proc, ns })
    }

    /// The node's overlay address: the global address with prefix length 7 on its TUN, once
    /// there (within [`READY`]).
    fn overlay_address(&mut self) -> Result<Ipv6Addr> {
        let deadline = Instant::now() + READY;
        loop {
            self.proc.check()?;
            let found = self
                .ns
                .ip_json(&["-6", "addr", "show", "dev", TUN, "scope", "global"])
                .ok()
                .and_then(|v| {
                    v.get(0)?["addr_info"]
                        .as_array()?
                        .iter()
                        .find(|a| a["prefixlen"] == 7)?["local"]
                        .as_str()?
                        .parse()
                        .ok()
                });
            if let Some(addr) = found {
                return Ok(addr);
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: no address with prefix length 7 on {TUN} within {READY:?}; end of {}:\n{}",
                    self.proc.label(),
                    self.proc.log().display(),
                    sys::tail(self.proc.log(), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cpu_seconds(&self) -> f64 {
        self.proc.cpu_seconds()
    }

    /// hyphae's drop counters so far, by reason, summed over workers (`hyphae_drop_<reason>_
    /// total` on its metrics page, read from inside its namespace by this binary's
    /// `--http-get`); empty for stock or when the page cannot be read.
    fn drops(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        if self.kind != Kind::Hyphae {
            return out;
        }
        let Ok(exe) = std::env::current_exe() else {
            return out;
        };
        let Ok(page) = self
            .ns
            .command(exe)
            .args(["--http-get", &format!("{METRICS}/metrics")])
            .stdin(Stdio::null())
            .output()
        else {
            return out;
        };
        for line in String::from_utf8_lossy(&page.stdout).lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = series.split('{').next().unwrap_or_default();
            if let Some(reason) = name
                .strip_prefix("hyphae_drop_")
                .and_then(|r| r.strip_suffix("_total"))
            {
                *out.entry(reason.to_owned()).or_insert(0) += value.trim().parse().unwrap_or(0);
            }
        }
        out
    }
}

/// `after - before` for every counter of `after`.
fn counter_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .collect()
}

/// `queue_full 1513, tun_write 2`, or `none`.
fn show_drops(d: &BTreeMap<String, u64>) -> String {
    let s: Vec<String> = d
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if s.is_empty() {
        "none".into()
    } else {
        s.join(", ")
    }
}

/// What a command printed, and how it ended.
#[derive(Debug)]
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to its end, killed after `limit`; standard output goes to `out` (kept with the
/// logs), standard error beside it.
fn run_for(cmd: &mut Command, limit: Duration, out: &Path) -> Result<Output> {
    let err = out.with_extension("stderr");
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(out)?)
        .stderr(std::fs::File::create(&err)?);
    sys::die_with_parent(cmd);
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: std::fs::read_to_string(out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    })
}

/// Round trips of one `ping` run, in milliseconds, from its per-packet lines.
#[derive(Clone, Debug, Default, PartialEq)]
struct PingStats {
    sent: u32,
    received: u32,
    min: f64,
    avg: f64,
    p50: f64,
    /// The 99th percentile (nearest rank): the tail a few slow replies make, which the
    /// average alone hides or blows up depending on the round.
    p99: f64,
    max: f64,
}

impl PingStats {
    /// From `ping`'s output: each `... time=0.123 ms` line, and the `N packets transmitted`
    /// line. `None` when no reply came back.
    fn parse(out: &str) -> Option<Self> {
        let times: Vec<f64> = out
            .lines()
            .filter_map(|l| {
                l.split_once("time=")?
                    .1
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        if times.is_empty() {
            return None;
        }
        let sent = out
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(times.len() as u32);
        Some(Self {
            sent,
            received: times.len() as u32,
            min: times.iter().copied().fold(f64::INFINITY, f64::min),
            avg: times.iter().sum::<f64>() / times.len() as f64,
            p50: stats::median(&times),
            p99: {
                let mut v = times.clone();
                v.sort_by(f64::total_cmp);
                v[(v.len() * 99).div_ceil(100).max(1) - 1]
            },
            max: times.iter().copied().fold(0.0, f64::max),
        })
    }
}

/// What `iperf3 -c ... -J` reports.
#[derive(Clone, Debug, Default, PartialEq)]
struct Iperf {
    /// `end.sum_received.bits_per_second`, in Gbit/s.
    gbit_per_s: f64,
    /// `end.sum_sent.retransmits`.
    retransmits: u64,
    /// The sender's mean smoothed RTT (`end.streams[0].sender.mean_rtt`), if reported.
    mean_rtt_us: Option<f64>,
    /// `end.cpu_utilization_percent`: host (the client) and remote (the server), percent of
    /// one vCPU over the test.
    client_cpu_pct: f64,
    server_cpu_pct: f64,
}

impl Iperf {
    fn parse(json: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(json).context("iperf3 -J printed no JSON")?;
        if let Some(e) = v["error"].as_str() {
            bail!("iperf3: {e}");
        }
        let end = &v["end"];
        Ok(Self {
            gbit_per_s: end["sum_received"]["bits_per_second"]
                .as_f64()
                .context("no end.sum_received.bits_per_second")?
                / 1e9,
            retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
            mean_rtt_us: end["streams"][0]["sender"]["mean_rtt"].as_f64(),
            client_cpu_pct: end["cpu_utilization_percent"]["host_total"]
                .as_f64()
                .unwrap_or(f64::NAN),
            server_cpu_pct: end["cpu_utilization_percent"]["remote_total"]
                .as_f64()
                .unwrap_or(f64::NAN),
        })
    }
}

/// A goal's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Met,
    NotMet,
    Inconclusive,
    /// No stock pair to compare with.
    NotShown,
}

impl Verdict {
    fn name(self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::NotMet => "not met",
            Self::Inconclusive => "inconclusive",
            Self::NotShown => "not shown",
        }
    }
}

/// Rounds where `f(hyphae's run, stock's run)` holds, and the rounds that ran both.
fn rounds_where(runs: &[Run], f: impl Fn(&Run, &Run) -> bool) -> (usize, usize) {
    let of = |k: Kind| runs.iter().filter(move |r| r.kind == k);
    let pairs: Vec<(&Run, &Run)> = of(Kind::Hyphae).zip(of(Kind::Stock)).collect();
    (pairs.iter().filter(|(h, s)| f(h, s)).count(), pairs.len())
}

/// Whether two figures' ranges over rounds overlap: a difference between them is then inside
/// the run-to-run noise.
fn overlap(a: &Spread, b: &Spread) -> bool {
    a.min() <= b.max() && b.min() <= a.max()
}

/// Whether hyphae's figure and stock's differ beyond the run-to-run noise: their ranges lie
/// apart, or at least [`MIN_ROUNDS_FOR_ADDED`] paired rounds all put hyphae on one side.
fn differ(h: &Spread, s: &Spread) -> bool {
    let r = Ratio::of(h, s);
    !overlap(h, s) || (r.0.rounds() >= MIN_ROUNDS_FOR_ADDED && r.conclusive())
}

/// hyphae over stock, per round: `2.31x (2.10..2.60)`, or `inconclusive (spread 0.9..1.2)` when
/// they do not [`differ`].
fn show_ratio(h: &Spread, s: &Spread) -> String {
    let r = Ratio::of(h, s).0;
    if r.rounds() == 0 {
        return "not measured".into();
    }
    if !differ(h, s) {
        format!("inconclusive (spread {:.2}..{:.2})", r.min(), r.max())
    } else {
        format!("{:.2}x ({:.2}..{:.2})", r.median(), r.min(), r.max())
    }
}

/// Throughput at least [`GOAL_RATIO`] times stock's: met when every round's ratio is and the
/// ranges are apart, not met when no round's is.
fn throughput_goal(h: &Spread, s: &Spread) -> Verdict {
    let r = Ratio::of(h, s).0;
    if r.rounds() == 0 {
        Verdict::NotShown
    } else if r.min() >= GOAL_RATIO && differ(h, s) {
        Verdict::Met
    } else if r.max() < GOAL_RATIO {
        Verdict::NotMet
    } else {
        Verdict::Inconclusive
    }
}

/// Round trip no higher than stock's: met when hyphae's is lower beyond the noise (see
/// [`differ`]), not met when higher; otherwise neither is shown.
fn ping_goal(h: &Spread, s: &Spread) -> Verdict {
    if h.rounds() == 0 || s.rounds() == 0 {
        Verdict::NotShown
    } else if !differ(h, s) {
        Verdict::Inconclusive
    } else if Ratio::of(h, s).0.median() < 1.0 {
        Verdict::Met
    } else {
        Verdict::NotMet
    }
}

/// One kind's figures over the rounds.
#[derive(Debug)]
struct Figures {
    gbit: Spread,
    retransmits: Spread,
    ping_avg: Spread,
    ping_p50: Spread,
    ping_p99: Spread,
    ping_min: Spread,
    node_cpu: Spread,
    gbit_per_cpu: Spread,
    busy: Spread,
    other: Spread,
    tun_drops: Spread,
    /// Frames the nodes dropped, per reason seen in any round.
    node_drops: BTreeMap<String, Spread>,
    mean_rtt: Spread,
}

impl Figures {
    fn of(runs: &[Run], kind: Kind) -> Self {
        let runs: Vec<&Run> = runs.iter().filter(|r| r.kind == kind).collect();
        let of = |f: &dyn Fn(&Run) -> f64| Spread::new(runs.iter().map(|r| f(r)).collect());
        Self {
            gbit: of(&|r| r.iperf.gbit_per_s),
            retransmits: of(&|r| r.iperf.retransmits as f64),
            ping_avg: of(&|r| r.ping.avg),
            ping_p50: of(&|r| r.ping.p50),
            ping_p99: of(&|r| r.ping.p99),
            ping_min: of(&|r| r.ping.min),
            node_cpu: of(&|r| (r.node_cpu_s[0] + r.node_cpu_s[1]) / r.wall_s),
            gbit_per_cpu: of(&|r| {
                r.iperf.gbit_per_s * r.wall_s / (r.node_cpu_s[0] + r.node_cpu_s[1])
            }),
            busy: of(&|r| r.busy_vcpu),
            other: of(&|r| r.other_vcpu()),
            tun_drops: of(&|r| (r.tun_drops[0] + r.tun_drops[1]) as f64),
            node_drops: runs
                .iter()
                .flat_map(|r| r.node_drops.iter().flat_map(|d| d.iter()))
                .filter(|(_, n)| **n > 0)
                .map(|(reason, _)| {
                    let per_round = runs.iter().map(|r| {
                        r.node_drops
                            .iter()
                            .filter_map(|d| d.get(reason))
                            .sum::<u64>() as f64
                    });
                    (reason.clone(), Spread::new(per_round.collect()))
                })
                .collect(),
            mean_rtt: of(&|r| r.iperf.mean_rtt_us.unwrap_or(f64::NAN)),
        }
    }
}

fn summarize(runs: &[Run], kinds: &[Kind], rounds: usize, setup: &Setup, quick: bool) {
    println!(
        "summary over {rounds} round(s), iperf3 {} s and {} pings each; median (min..max):",
        setup.seconds, setup.pings
    );
    let figures: Vec<(Kind, Figures)> = kinds.iter().map(|&k| (k, Figures::of(runs, k))).collect();
    for (kind, f) in &figures {
        let drops = match kind {
            Kind::Hyphae if f.node_drops.is_empty() => ", router drops none".into(),
            Kind::Hyphae => {
                let each: Vec<String> = f
                    .node_drops
                    .iter()
                    .map(|(reason, n)| format!("{reason} {}", n.show(1.0, 0, "")))
                    .collect();
                format!(", router drops (A+B) {}", each.join(", "))
            }
            Kind::Stock => String::new(),
        };
        println!(
            "  {:<6}  TCP {}, retransmits {}{drops}, TUN drops {}",
            kind.name(),
            f.gbit.show(1.0, 2, " Gbit/s"),
            f.retransmits.show(1.0, 0, ""),
            f.tun_drops.show(1.0, 0, ""),
        );
        println!(
            "          ping avg {}, p50 {}, p99 {}, min {}; sender's smoothed RTT under load {}",
            f.ping_avg.show(1.0, 3, " ms"),
            f.ping_p50.show(1.0, 3, " ms"),
            f.ping_p99.show(1.0, 3, " ms"),
            f.ping_min.show(1.0, 3, " ms"),
            f.mean_rtt.show(1.0, 0, " us"),
        );
        println!(
            "          nodes' CPU {} vCPUs, {} Gbit per node CPU-second; machine {} vCPUs busy, \
             other work ~{} vCPUs",
            f.node_cpu.show(1.0, 2, ""),
            f.gbit_per_cpu.show(1.0, 2, ""),
            f.busy.show(1.0, 2, ""),
            f.other.show(1.0, 2, ""),
        );
    }
    let [(_, h), (_, s)] = &figures[..] else {
        println!("  hyphae/stock: not measured (no stock pair)");
        println!(
            "goals: TCP throughput >= {GOAL_RATIO}x stock's: {}; ping round trip no higher \
             than stock's: {}",
            Verdict::NotShown.name(),
            Verdict::NotShown.name()
        );
        return;
    };
    println!(
        "  hyphae/stock: TCP throughput {}, ping avg {}, ping p50 {}, ping p99 {}, Gbit per node \
         CPU-s {}",
        show_ratio(&h.gbit, &s.gbit),
        show_ratio(&h.ping_avg, &s.ping_avg),
        show_ratio(&h.ping_p50, &s.ping_p50),
        show_ratio(&h.ping_p99, &s.ping_p99),
        show_ratio(&h.gbit_per_cpu, &s.gbit_per_cpu),
    );
    if quick {
        println!("goals: not judged (--quick is a smoke run)");
        return;
    }
    let tput = throughput_goal(&h.gbit, &s.gbit);
    let r = Ratio::of(&h.gbit, &s.gbit).0;
    let (at_goal, paired) = rounds_where(runs, |h, s| {
        h.iperf.gbit_per_s >= GOAL_RATIO * s.iperf.gbit_per_s
    });
    println!(
        "goal: TCP throughput >= {GOAL_RATIO}x stock's: {} (per-round ratio {:.2}..{:.2}, \
         median {:.2}; at or above {GOAL_RATIO}x in {at_goal} of {paired} rounds)",
        tput.name(),
        r.min(),
        r.max(),
        r.median(),
    );
    let ping = ping_goal(&h.ping_avg, &s.ping_avg);
    let (not_higher, _) = rounds_where(runs, |h, s| h.ping.avg <= s.ping.avg);
    println!(
        "goal: ping round trip no higher than stock's: {} (avg hyphae {:.3}..{:.3} ms, stock \
         {:.3}..{:.3} ms; hyphae's no higher in {not_higher} of {paired} rounds{})",
        ping.name(),
        h.ping_avg.min(),
        h.ping_avg.max(),
        s.ping_avg.min(),
        s.ping_avg.max(),
        if ping == Verdict::Inconclusive {
            "; the ranges overlap: neither higher nor lower shown"
        } else {
            ""
        }
    );
}

/// Runs iproute2's `ip args`: its standard output, or the command and its error.
fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_lines_give_round_trips() {
        let out = "PING 4ab::1 (4ab::1) 56 data bytes\n\
                   64 bytes from 4ab::1: icmp_seq=1 ttl=64 time=0.300 ms\n\
                   64 bytes from 4ab::1: icmp_seq=2 ttl=64 time=0.100 ms\n\
                   64 bytes from 4ab::1: icmp_seq=4 ttl=64 time=0.200 ms\n\n\
                   --- 4ab::1 ping statistics ---\n\
                   4 packets transmitted, 3 received, 25% packet loss, time 61ms\n\
                   rtt min/avg/max/mdev = 0.100/0.200/0.300/0.081 ms\n";
        let p = PingStats::parse(out).expect("replies");
        assert_eq!((p.sent, p.received), (4, 3));
        assert_eq!((p.min, p.p50, p.p99, p.max), (0.1, 0.2, 0.3, 0.3));
        assert!((p.avg - 0.2).abs() < 1e-9);
        assert!(PingStats::parse("4 packets transmitted, 0 received").is_none());
        // The 99th percentile by nearest rank: one slow reply in 200 is above it.
        let mut many: String = (1..=199)
            .map(|i| format!("64 bytes: icmp_seq={i} ttl=64 time=0.{:03} ms\n", 100 + i))
            .collect();
        many.push_str("64 bytes: icmp_seq=200 ttl=64 time=9.000 ms\n");
        let p = PingStats::parse(&many).expect("replies");
        assert_eq!(p.received, 200);
        assert!((p.p99 - 0.298).abs() < 1e-9, "{}", p.p99);
        assert_eq!(p.max, 9.0);
    }

    #[test]
    fn iperf_json_gives_received_rate_and_retransmits() {
        let json = r#"{"end": {"sum_sent": {"bits_per_second": 2.1e9, "retransmits": 17},
            "sum_received": {"bits_per_second": 2.0e9},
            "streams": [{"sender": {"mean_rtt": 450}}],
            "cpu_utilization_percent": {"host_total": 80.5, "remote_total": 40.0}}}"#;
        let i = Iperf::parse(json).expect("parses");
        assert_eq!((i.gbit_per_s, i.retransmits), (2.0, 17));
        assert_eq!(i.mean_rtt_us, Some(450.0));
        let err = Iperf::parse(r#"{"error": "unable to connect"}"#).unwrap_err();
        assert!(err.to_string().contains("unable to connect"));
    }

    #[test]
    fn overlapping_ranges_are_inconclusive() {
        let h = Spread::new(vec![4.0, 5.0, 6.0]);
        let s = Spread::new(vec![2.0, 2.0, 2.5]);
        assert_eq!(show_ratio(&h, &s), "2.40x (2.00..2.50)");
        assert_eq!(throughput_goal(&h, &s), Verdict::Met);
        let close = Spread::new(vec![2.4, 4.2, 5.5]);
        assert_eq!(show_ratio(&close, &s), "inconclusive (spread 1.20..2.20)");
        assert_eq!(throughput_goal(&close, &s), Verdict::Inconclusive);
        let low = Spread::new(vec![3.0, 3.0, 3.0]);
        assert_eq!(throughput_goal(&low, &s), Verdict::NotMet);
        assert_eq!(throughput_goal(&h, &Spread::default()), Verdict::NotShown);
        // Round trips: lower is better, overlap shows nothing.
        let fast = Spread::new(vec![0.1, 0.12]);
        let slow = Spread::new(vec![0.2, 0.3]);
        assert_eq!(ping_goal(&fast, &slow), Verdict::Met);
        assert_eq!(ping_goal(&slow, &fast), Verdict::NotMet);
        assert_eq!(ping_goal(&fast, &fast), Verdict::Inconclusive);
        // Overlapping ranges, but hyphae lower in every one of five paired rounds: shown.
        let h5 = Spread::new(vec![0.31, 0.43, 0.35, 0.33, 0.36]);
        let s5 = Spread::new(vec![0.38, 0.55, 0.44, 0.40, 0.45]);
        assert!(overlap(&h5, &s5));
        assert_eq!(ping_goal(&h5, &s5), Verdict::Met);
        assert_eq!(ping_goal(&s5, &h5), Verdict::NotMet);
        assert!(
            show_ratio(&h5, &s5).starts_with("0.8"),
            "{}",
            show_ratio(&h5, &s5)
        );
        // The same with one round the other way, or with four rounds only: not shown.
        let one_up = Spread::new(vec![0.31, 0.43, 0.35, 0.33, 0.46]);
        assert_eq!(ping_goal(&one_up, &s5), Verdict::Inconclusive);
        let h4 = Spread::new(vec![0.31, 0.43, 0.35, 0.33]);
        let s4 = Spread::new(vec![0.38, 0.55, 0.44, 0.40]);
        assert_eq!(ping_goal(&h4, &s4), Verdict::Inconclusive);
    }
}
