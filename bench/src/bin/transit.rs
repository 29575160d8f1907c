//! Transit load generator: `hyphae-router`, and stock mycelium 0.7.10 beside it, between two
//! fake TCP peers.
//!
//! A router under test runs as a child process. Two fake peers connect to it over TCP, each
//! announces its own /64, and one streams data frames through the router to the other, which
//! counts them and records one-way latency (from the frame's intended send time) in an
//! hdrhistogram.
//!
//! ```text
//! cargo build --release -p hyphae-router -p hyphae-bench --bins
//! target/release/transit --driver uring --json transit.json
//! ```
//!
//! **Saturation**, in `--saturation-rounds` rounds (3). In each round every subject runs once,
//! 296-byte and then 1340-byte frames for `--seconds` each after a short warm-up: the hyphae
//! router, stock mycelium (`--stock PATH`, default `$HYPHAE_STOCK_MYCELIUM`, else
//! `../shared/bin/mycelium-0.7.10` when it exists; `--no-stock` skips it) and the same
//! saturation straight over one TCP connection (the generator's own floor on this machine).
//! The subject that goes first rotates from round to round, and each router is a fresh
//! process. Reported per frame size: delivered frames/s, Gbit/s, the router's CPU seconds and
//! frames per CPU-second, latency under saturation; each as the median with the lowest and
//! highest round, and hyphae over stock as the median of the per-round ratios with their
//! spread.
//!
//! **Paced latency** (hyphae only), open-loop at `--rate`, in each of three placements of the
//! threads on the vCPUs (see [`Placement`]), over three paths: through the router, through a
//! plain relay process (`relay`: one read and one write per wake, the floor of any hop here),
//! and straight over TCP. The paths take turns in `--rounds` short rounds. What a hop adds is,
//! per round, the difference of the two paths' percentiles in that round; reported as the
//! median over rounds with the spread, or as *inconclusive* with the spread when the spread
//! reaches zero, the merged distributions disagree, or there are too few rounds
//! ([`stats::Added`]). No negative added latency is ever printed as a result.
//!
//! `--json FILE` keeps every figure of every round, the command line, the machine and the
//! binaries (hyphae's git commit, stock's version).

// The modules live in `transit/` beside this file (a binary's root file finds its modules in
// its own directory otherwise).
#[path = "transit/meta.rs"]
mod meta;
#[path = "transit/procs.rs"]
mod procs;
#[path = "transit/stats.rs"]
mod stats;
#[path = "transit/traffic.rs"]
mod traffic;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};

use crate::meta::Machine;
use crate::procs::{Kind, Launch, Router, set_affinity};
use crate::stats::{Added, Ratio, Spread};
use crate::traffic::{Paced, Pcts, RelaySink, SatRun, direct_pair, peers, saturate};

#[derive(Parser, Debug)]
struct Args {
    /// The router binary (default: `hyphae-router` next to this one).
    #[arg(long)]
    router: Option<PathBuf>,
    /// Router I/O driver: uring or portable.
    #[arg(long, default_value = "uring")]
    driver: String,
    /// Also measure hyphae on this driver at saturation, as a further subject ("hyphae-vs")
    /// in every round, with per-round ratios of `--driver` over it.
    #[arg(long)]
    vs_driver: Option<String>,
    /// Router data-plane workers.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Seconds per saturation run (0: no saturation runs).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Saturation rounds: each runs every subject (hyphae, stock, direct) once, in an order
    /// that rotates from round to round.
    #[arg(long, default_value_t = 3)]
    saturation_rounds: usize,
    /// Stock mycelium binary, measured beside hyphae at saturation (default:
    /// $HYPHAE_STOCK_MYCELIUM, else ../shared/bin/mycelium-0.7.10 if it exists).
    #[arg(long, conflicts_with = "no_stock")]
    stock: Option<PathBuf>,
    /// Do not measure stock mycelium.
    #[arg(long)]
    no_stock: bool,
    /// Paced rate, frames/s.
    #[arg(long, default_value_t = 50_000)]
    rate: u64,
    /// Seconds of the paced run, per path and placement (0: no paced runs).
    #[arg(long, default_value_t = 12.0)]
    paced_seconds: f64,
    /// Rounds the paced run is split into; in each, the three paths take turns, and each path
    /// goes first equally often when this is a multiple of three.
    #[arg(long, default_value_t = 12)]
    rounds: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Passed to the hyphae router as --tcp-rcvbuf (bytes).
    #[arg(long)]
    router_rcvbuf: Option<usize>,
    /// Placements of the paced run, comma-separated; each gets its own router and rounds.
    #[arg(long, value_delimiter = ',', default_values = ["unpinned", "split", "apart"])]
    placement: Vec<Placement>,
    /// The plain relay measured as the floor of a hop (default: `relay` next to this binary).
    #[arg(long)]
    relay: Option<PathBuf>,
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

/// The frame sizes of the saturation runs: a 256-byte payload, and one that fills a
/// 1400-byte-MTU packet, each with the 40-byte data header.
const FRAME_LENS: [usize; 2] = [296, 1340];
/// The paced run's frame size.
const PACED_FRAME_LEN: usize = 296;

fn main() -> Result<()> {
    let args = Args::parse();
    if args.seconds <= 0.0 && args.paced_seconds <= 0.0 {
        bail!("nothing to measure: --seconds and --paced-seconds are both 0");
    }
    procs::set_timer_slack();
    // The CPUs this process may use, before anything is pinned.
    let cpus = procs::allowed_cpus()?;
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("hyphae-transit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let launch = Launch {
        hyphae: args
            .router
            .clone()
            .unwrap_or_else(|| exe.with_file_name("hyphae-router")),
        stock: stock_binary(&args, &exe)?,
        relay: args
            .relay
            .clone()
            .unwrap_or_else(|| exe.with_file_name("relay")),
        driver: args.driver.clone(),
        vs_driver: args.vs_driver.clone(),
        workers: args.workers,
        rcvbuf: args.router_rcvbuf,
        dir: dir.clone(),
    };
    match run(&args, &launch, &cpus) {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        }
        Err(e) => {
            eprintln!(
                "transit: routers' logs and configs kept in {}",
                dir.display()
            );
            Err(e)
        }
    }
}

/// The stock binary to measure: `--stock`, else `$HYPHAE_STOCK_MYCELIUM` (both must exist),
/// else `../shared/bin/mycelium-0.7.10` beside the work tree this binary was built in, if it
/// exists.
fn stock_binary(args: &Args, exe: &Path) -> Result<Option<PathBuf>> {
    if args.no_stock {
        return Ok(None);
    }
    let env = std::env::var_os("HYPHAE_STOCK_MYCELIUM").filter(|v| !v.is_empty());
    if let Some(p) = args.stock.clone().or_else(|| env.map(PathBuf::from)) {
        if !p.is_file() {
            bail!(
                "stock mycelium binary {} not found (--stock or $HYPHAE_STOCK_MYCELIUM; \
                 --no-stock to skip it)",
                p.display()
            );
        }
        return Ok(Some(p));
    }
    // target/<profile>/transit -> the work tree -> ../shared/bin.
    let beside_tree = exe
        .ancestors()
        .nth(3)
        .map(|tree| tree.join("../shared/bin/mycelium-0.7.10"));
    Ok(beside_tree
        .into_iter()
        .chain([PathBuf::from("/work/shared/bin/mycelium-0.7.10")])
        .find(|p| p.is_file())
        .map(|p| p.canonicalize().unwrap_or(p)))
}

fn run(args: &Args, launch: &Launch, cpus: &[usize]) -> Result<()> {
    let machine = Machine::probe(cpus);
    let (started_unix, started_utc) = meta::now_utc();
    let command = meta::command_line();
    let hyphae = meta::hyphae_identity(&launch.hyphae);
    // Stock runs only at saturation: a paced-only run does not name it.
    let stock = launch
        .stock
        .as_deref()
        .filter(|_| args.seconds > 0.0)
        .map(meta::stock_identity);
    println!("transit on {}", machine.line());
    println!(
        "  started {started_utc}, load average {}",
        machine.loadavg()
    );
    println!("  command: {command}");
    println!(
        "  hyphae: {} ({}, {}), --driver {} --workers {}",
        launch.hyphae.display(),
        hyphae["version"].as_str().unwrap_or("version unknown"),
        meta::short_commit(&hyphae),
        args.driver,
        args.workers
    );
    match (&launch.stock, &stock) {
        (Some(p), Some(id)) => println!(
            "  stock: {} ({})",
            p.display(),
            id["version"].as_str().unwrap_or("version unknown")
        ),
        (Some(_), None) => {
            println!("  stock: not measured (it runs at saturation only, and --seconds is 0)");
        }
        _ => println!(
            "  stock: not measured (no --stock, $HYPHAE_STOCK_MYCELIUM or \
             ../shared/bin/mycelium-0.7.10)"
        ),
    }

    let saturation = if args.seconds > 0.0 {
        let s = saturation(args, launch)?;
        s.print_summary();
        Some(s.json())
    } else {
        None
    };
    let mut paced = Vec::new();
    if args.paced_seconds <= 0.0 {
        println!("paced runs: none (--paced-seconds 0)");
    }
    for &placement in args.placement.iter().filter(|_| args.paced_seconds > 0.0) {
        let pair = match cpus[..] {
            [a, b, ..] => [a, b],
            _ if placement == Placement::Unpinned => [0, 0],
            _ => {
                println!("placement {}: skipped, needs two vCPUs", placement.name());
                continue;
            }
        };
        paced.push(paced_run(args, launch, placement, pair)?);
    }
    if let Some(path) = &args.json {
        let doc = json!({
            "schema": "hyphae-transit/2",
            "started_unix": started_unix, "started_utc": started_utc,
            "command": command,
            "argv": std::env::args().collect::<Vec<_>>(),
            "machine": machine.json(),
            "binaries": {
                "hyphae_router": hyphae, "stock": stock,
                "relay": {"path": launch.relay.display().to_string()},
            },
            "settings": {
                "driver": args.driver, "vs_driver": args.vs_driver, "workers": args.workers,
                "seconds": args.seconds,
                "saturation_rounds": args.saturation_rounds, "warmup_s": warmup(args),
                "rate": args.rate, "paced_seconds": args.paced_seconds,
                "paced_rounds": args.rounds.max(1), "router_rcvbuf": args.router_rcvbuf,
                "placements": args.placement.iter().map(|p| p.name()).collect::<Vec<_>>(),
            },
            "saturation": saturation,
            "paced": paced,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Warm-up before each saturation run: half a second, or the run's length if shorter.
fn warmup(args: &Args) -> f64 {
    args.seconds.min(0.5)
}

/// What a saturation run streams through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subject {
    Router(Kind),
    /// One TCP connection, no hop: the generator's floor.
    Direct,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Self::Router(k) => k.name(),
            Self::Direct => "direct",
        }
    }
}

/// All saturation rounds.
#[derive(Debug)]
struct Saturation {
    subjects: Vec<Subject>,
    rounds: Vec<SatRound>,
    seconds: f64,
}

#[derive(Debug)]
struct SatRound {
    loadavg: String,
    order: Vec<Subject>,
    runs: Vec<(Subject, SatRun)>,
    /// vCPU time the hypervisor took from the machine while each subject ran (ms).
    steal_ms: Vec<(Subject, f64)>,
}

/// The saturation rounds: every subject once per round, the first one rotating.
fn saturation(args: &Args, launch: &Launch) -> Result<Saturation> {
    let mut subjects = vec![Subject::Router(Kind::Hyphae)];
    if launch.vs_driver.is_some() {
        subjects.push(Subject::Router(Kind::HyphaeVs));
    }
    if launch.stock.is_some() {
        subjects.push(Subject::Router(Kind::Stock));
    }
    subjects.push(Subject::Direct);
    let n = args.saturation_rounds.max(1);
    let mut rounds = Vec::new();
    for round in 0..n {
        let order: Vec<Subject> = (0..subjects.len())
            .map(|i| subjects[(round + i) % subjects.len()])
            .collect();
        let loadavg = procs::loadavg();
        println!(
            "saturation round {}/{n} (load average {loadavg}): {}",
            round + 1,
            order
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut runs = Vec::new();
        let mut steal_ms = Vec::new();
        for &s in &order {
            let steal0 = procs::steal_ms();
            for run in saturate_subject(args, launch, s)
                .with_context(|| format!("saturation round {}, {}", round + 1, s.name()))?
            {
                print_sat_run(s, &run);
                runs.push((s, run));
            }
            let steal = procs::steal_ms() - steal0;
            println!(
                "  (the host took {steal:.0} ms of vCPU time during {})",
                s.name()
            );
            steal_ms.push((s, steal));
        }
        rounds.push(SatRound {
            loadavg,
            order,
            runs,
            steal_ms,
        });
    }
    Ok(Saturation {
        subjects,
        rounds,
        seconds: args.seconds,
    })
}

/// Both frame sizes through one subject: a fresh router and fresh peers, or a fresh TCP
/// connection.
fn saturate_subject(args: &Args, launch: &Launch, s: Subject) -> Result<Vec<SatRun>> {
    let (secs, warm) = (args.seconds, warmup(args));
    let mut out = Vec::new();
    match s {
        Subject::Router(kind) => {
            let mut router = Router::start(launch, kind, None)?;
            let (mut tx, rx) = peers(&mut router, None)?;
            for fl in FRAME_LENS {
                out.push(saturate(&mut tx, &rx, fl, secs, warm, Some(&mut router))?);
            }
        }
        Subject::Direct => {
            let (mut tx, rx) = direct_pair(None)?;
            for fl in FRAME_LENS {
                out.push(saturate(&mut tx, &rx, fl, secs, warm, None)?);
            }
        }
    }
    Ok(out)
}

fn print_sat_run(s: Subject, r: &SatRun) {
    let cpu = match (r.router_cpu_s, r.frames_per_cpu_s()) {
        (Some(c), Some(f)) => format!(", router CPU {c:.2} s, {:.3} M frames/CPU-s", f / 1e6),
        (Some(c), None) => format!(", router CPU {c:.2} s"),
        _ => String::new(),
    };
    println!(
        "  {:<6} {:>5} B: {:>9.0} frames/s {:>6.2} Gbit/s{cpu}; latency p50 {:.1} us p99 {:.1} us \
         p99.9 {:.1} us max {:.1} us",
        s.name(),
        r.frame_len,
        r.frames_per_s,
        r.gbit_per_s,
        r.latency.p50,
        r.latency.p99,
        r.latency.p999,
        r.latency.max
    );
}

/// One subject's figures at one frame size, over the rounds.
#[derive(Debug)]
struct SatSummary {
    frames_per_s: Spread,
    gbit_per_s: Spread,
    router_cpu_s: Spread,
    frames_per_cpu_s: Spread,
    p50_us: Spread,
    p99_us: Spread,
}

impl Saturation {
    /// `s`'s figures at `frame_len`, one value per round (NaN where a round lacks it).
    fn summary(&self, s: Subject, frame_len: usize) -> SatSummary {
        let runs: Vec<Option<&SatRun>> = self
            .rounds
            .iter()
            .map(|r| {
                r.runs
                    .iter()
                    .find(|(x, run)| *x == s && run.frame_len == frame_len)
                    .map(|(_, run)| run)
            })
            .collect();
        let of = |f: &dyn Fn(&SatRun) -> Option<f64>| {
            Spread::new(
                runs.iter()
                    .map(|r| r.and_then(f).unwrap_or(f64::NAN))
                    .collect(),
            )
        };
        SatSummary {
            frames_per_s: of(&|r| Some(r.frames_per_s)),
            gbit_per_s: of(&|r| Some(r.gbit_per_s)),
            router_cpu_s: of(&|r| r.router_cpu_s),
            frames_per_cpu_s: of(&|r| r.frames_per_cpu_s()),
            p50_us: of(&|r| Some(r.latency.p50)),
            p99_us: of(&|r| Some(r.latency.p99)),
        }
    }

    /// Hyphae over stock at `frame_len`: frames/s, frames per CPU-second and Gbit/s, each as
    /// per-round ratios (`None` without stock).
    fn ratios(&self, frame_len: usize) -> Option<[(&'static str, Ratio); 3]> {
        self.ratios_over(Kind::Stock, frame_len)
    }

    /// The same, hyphae over `other` (`None` if it is not a subject).
    fn ratios_over(&self, other: Kind, frame_len: usize) -> Option<[(&'static str, Ratio); 3]> {
        let other = Subject::Router(other);
        if !self.subjects.contains(&other) {
            return None;
        }
        let h = self.summary(Subject::Router(Kind::Hyphae), frame_len);
        let s = self.summary(other, frame_len);
        Some([
            ("frames_per_s", Ratio::of(&h.frames_per_s, &s.frames_per_s)),
            (
                "frames_per_cpu_s",
                Ratio::of(&h.frames_per_cpu_s, &s.frames_per_cpu_s),
            ),
            ("gbit_per_s", Ratio::of(&h.gbit_per_s, &s.gbit_per_s)),
        ])
    }

    fn print_summary(&self) {
        println!(
            "saturation, median (min..max) over {} rounds of {:.1} s per frame size:",
            self.rounds.len(),
            self.seconds
        );
        for fl in FRAME_LENS {
            for &s in &self.subjects {
                let m = self.summary(s, fl);
                let cpu = match s {
                    Subject::Router(_) => format!(
                        ", router CPU {} s, {} M frames/CPU-s",
                        m.router_cpu_s.show(1.0, 2, ""),
                        m.frames_per_cpu_s.show(1e6, 3, "")
                    ),
                    Subject::Direct => " (the generator's floor)".into(),
                };
                println!(
                    "  {:<6} {fl:>5} B: {} M frames/s, {} Gbit/s{cpu}; latency p50 {} us, p99 {} us",
                    s.name(),
                    m.frames_per_s.show(1e6, 3, ""),
                    m.gbit_per_s.show(1.0, 2, ""),
                    m.p50_us.show(1.0, 0, ""),
                    m.p99_us.show(1.0, 0, ""),
                );
            }
            if let Some([(_, f), (_, c), (_, g)]) = self.ratios(fl) {
                println!(
                    "  hyphae/stock {fl:>5} B: frames/s {}, frames per CPU-s {}, Gbit/s {}",
                    f.show(),
                    c.show(),
                    g.show()
                );
            }
            if let Some([(_, f), (_, c), _]) = self.ratios_over(Kind::HyphaeVs, fl) {
                println!(
                    "  hyphae/hyphae-vs {fl:>5} B (driver over driver): frames/s {}, frames per CPU-s {}",
                    f.show(),
                    c.show()
                );
            }
        }
    }

    fn json(&self) -> Value {
        let rounds: Vec<Value> = self
            .rounds
            .iter()
            .enumerate()
            .map(|(i, r)| {
                json!({
                    "round": i + 1, "loadavg": r.loadavg,
                    "steal_ms": r.steal_ms.iter().map(|(s, ms)| json!({"subject": s.name(), "ms": ms})).collect::<Vec<_>>(),
                    "order": r.order.iter().map(|s| s.name()).collect::<Vec<_>>(),
                    "runs": r.runs.iter().map(|(s, run)| run.json(s.name())).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut summary = Vec::new();
        for fl in FRAME_LENS {
            for &s in &self.subjects {
                let m = self.summary(s, fl);
                let router = matches!(s, Subject::Router(_));
                summary.push(json!({
                    "subject": s.name(), "frame_len": fl,
                    "frames_per_s": m.frames_per_s.json(), "gbit_per_s": m.gbit_per_s.json(),
                    "router_cpu_s": router.then(|| m.router_cpu_s.json()),
                    "frames_per_cpu_s": router.then(|| m.frames_per_cpu_s.json()),
                    "p50_us": m.p50_us.json(), "p99_us": m.p99_us.json(),
                }));
            }
        }
        // Hyphae over `other`, every frame size and figure.
        let ratios_over = |other: Kind| -> Vec<Value> {
            FRAME_LENS
                .into_iter()
                .flat_map(|fl| {
                    let rows = self.ratios_over(other, fl).into_iter().flatten();
                    rows.map(move |(figure, r)| {
                        let mut v = r.json();
                        v["frame_len"] = json!(fl);
                        v["figure"] = json!(figure);
                        v
                    })
                })
                .collect()
        };
        json!({
            "subjects": self.subjects.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "seconds": self.seconds, "rounds": rounds, "summary": summary,
            "ratios_hyphae_over_stock": ratios_over(Kind::Stock),
            "ratios_hyphae_over_hyphae_vs": ratios_over(Kind::HyphaeVs),
        })
    }
}

/// The paced run in one placement: three paths from the generator to a sink (through the
/// router, through the plain relay, straight over TCP), measured in short rounds that take
/// turns so all three see the same drift of a shared machine.
fn paced_run(
    args: &Args,
    launch: &Launch,
    placement: Placement,
    pair: [usize; 2],
) -> Result<Value> {
    let [gen_cpu, sink_cpu, hop_cpu] = placement.cpus(pair);
    set_affinity(gen_cpu)?;
    let r = paced_pinned(args, launch, placement, [gen_cpu, sink_cpu, hop_cpu])
        .with_context(|| format!("paced run, placement {}", placement.name()));
    set_affinity(None)?;
    r
}

fn paced_pinned(
    args: &Args,
    launch: &Launch,
    placement: Placement,
    cpus: [Option<usize>; 3],
) -> Result<Value> {
    let [_, sink_cpu, hop_cpu] = cpus;
    let mut router = Router::start(launch, Kind::Hyphae, hop_cpu)?;
    let sink = RelaySink::bind()?;
    let (relay, relay_port) = procs::start_relay(launch, hop_cpu, sink.port()?)?;
    let mut paths = [
        (
            Paced::new("through router", args.rate),
            peers(&mut router, sink_cpu)?,
        ),
        (
            Paced::new("through plain relay", args.rate),
            sink.connect(relay_port, sink_cpu)?,
        ),
        (
            Paced::new("direct TCP (baseline)", args.rate),
            direct_pair(sink_cpu)?,
        ),
    ];
    let rounds = args.rounds.max(1);
    let per_round = args.paced_seconds / rounds as f64;
    let (steal0, t0) = (procs::steal_ms(), std::time::Instant::now());
    for round in 0..rounds {
        for i in 0..paths.len() {
            let (paced, (tx, rx)) = &mut paths[(round + i) % 3];
            paced.round(tx, rx, PACED_FRAME_LEN, per_round)?;
        }
        router.check()?;
    }
    let steal = procs::steal_ms() - steal0;
    let elapsed = t0.elapsed().as_secs_f64();
    drop((router, relay));
    let cpu = |c: Option<usize>| c.map_or_else(|| "any".to_owned(), |c| c.to_string());
    println!(
        "paced {PACED_FRAME_LEN} B at {}/s, placement {} (generator vCPU {}, sinks {}, hop {}), \
         {rounds} rounds of {per_round:.2} s per path; the host took {steal:.0} ms of vCPU time \
         in these {elapsed:.0} s",
        args.rate,
        placement.name(),
        cpu(cpus[0]),
        cpu(sink_cpu),
        cpu(hop_cpu),
    );
    println!("  one-way latency, median (min..max) over rounds:");
    let mut path_json = Vec::new();
    for (p, _) in &paths {
        let (merged, spreads) = (Pcts::of(&p.hist), path_spreads(p));
        let lost = if p.lost > 0 {
            format!(", {} lost", p.lost)
        } else {
            String::new()
        };
        println!(
            "  {:<22} p50 {} us, p99 {} us, p99.9 {} us; {:.0} frames/s{lost}",
            p.name,
            spreads[0].show(1.0, 1, ""),
            spreads[1].show(1.0, 1, ""),
            spreads[2].show(1.0, 1, ""),
            p.frames_per_s()
        );
        path_json.push(json!({
            "path": p.name, "offered_per_s": p.rate, "frames_per_s": p.frames_per_s(),
            "lost": p.lost, "merged_us": merged.json(),
            "p50_us": spreads[0].json(), "p99_us": spreads[1].json(),
            "p999_us": spreads[2].json(), "max_us": spreads[3].json(),
            "curve": traffic::curve_of(&p.hist),
        }));
    }
    let [(router, _), (relay, _), (direct, _)] = &paths;
    // Over the direct path: what each hop adds. Router over relay: what the router costs beyond
    // the plainest hop in the same placement (the only fair comparison in `split`, where the
    // direct path never crosses between vCPUs and a hop path crosses twice).
    let added = [
        ("router over direct", router, direct),
        ("relay over direct", relay, direct),
        ("router over relay", router, relay),
    ];
    let mut added_json = Vec::new();
    for (label, hop, base) in added {
        let [p50, p99, p999] = added_by(hop, base);
        println!(
            "  added, {label}: p50 {}, p99 {}, p99.9 {}",
            p50.show(),
            p99.show(),
            p999.show()
        );
        added_json.push(json!({
            "path": label, "hop": hop.name, "base": base.name,
            "p50_us": p50.json(), "p99_us": p99.json(), "p999_us": p999.json(),
        }));
    }
    Ok(json!({
        "placement": placement.name(),
        "cpus": {"generator": cpus[0], "sinks": sink_cpu, "hop": hop_cpu},
        "frame_len": PACED_FRAME_LEN, "offered_per_s": args.rate,
        "rounds": rounds, "round_s": per_round, "steal_ms": steal, "elapsed_s": elapsed,
        "paths": path_json, "added": added_json,
    }))
}

/// A path's p50, p99, p99.9 and max, one value per round.
fn path_spreads(p: &Paced) -> [Spread; 4] {
    let of = |f: fn(&Pcts) -> f64| {
        Spread::new(
            p.per_round
                .iter()
                .map(|r| r.as_ref().map_or(f64::NAN, f))
                .collect(),
        )
    };
    [of(|x| x.p50), of(|x| x.p99), of(|x| x.p999), of(|x| x.max)]
}

/// What `hop` adds over `base` at p50, p99 and p99.9: per round, the difference of the two
/// paths' percentiles in that round (rounds where either received nothing are left out), and
/// the difference of the merged distributions' percentiles.
fn added_by(hop: &Paced, base: &Paced) -> [Added; 3] {
    let (h, b) = (Pcts::of(&hop.hist), Pcts::of(&base.hist));
    let one = |f: fn(&Pcts) -> f64| Added {
        per_round: Spread::new(
            hop.per_round
                .iter()
                .zip(&base.per_round)
                .map(|(x, y)| match (x, y) {
                    (Some(x), Some(y)) => f(x) - f(y),
                    _ => f64::NAN,
                })
                .collect(),
        ),
        merged: f(&h) - f(&b),
    };
    [one(|p| p.p50), one(|p| p.p99), one(|p| p.p999)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paced_with(rounds: &[Option<f64>]) -> Paced {
        let mut p = Paced::new("x", 1000);
        p.per_round = rounds
            .iter()
            .map(|r| {
                r.map(|v| Pcts {
                    p50: v,
                    p99: v,
                    p999: v,
                    max: v,
                })
            })
            .collect();
        p
    }

    #[test]
    fn added_pairs_rounds_and_skips_empty_ones() {
        // Round 2 of the hop and round 3 of the base received nothing: only rounds 1 and 4,
        // paired with themselves, count.
        let hop = paced_with(&[Some(30.0), None, Some(10.0), Some(50.0)]);
        let base = paced_with(&[Some(10.0), Some(10.0), None, Some(20.0)]);
        let [_, p99, _] = added_by(&hop, &base);
        let s = &p99.per_round;
        assert_eq!(s.rounds(), 2);
        assert_eq!((s.median(), s.min(), s.max()), (25.0, 20.0, 30.0));
        // Two rounds are too few for a result, whatever their sign.
        assert!(!p99.conclusive());
    }

    #[test]
    fn saturation_rotates_and_pairs_ratios_by_round() {
        let run = |fps: f64, cpu: f64| SatRun {
            frame_len: 296,
            seconds: 1.0,
            frames: fps as u64,
            frames_per_s: fps,
            gbit_per_s: fps * 296.0 * 8.0 / 1e9,
            router_cpu_s: Some(cpu),
            steal_ms: 0.0,
            latency: Pcts {
                p50: 1.0,
                p99: 2.0,
                p999: 3.0,
                max: 4.0,
            },
            curve: Vec::new(),
        };
        let (h, s) = (Subject::Router(Kind::Hyphae), Subject::Router(Kind::Stock));
        let round = |a: f64, b: f64| SatRound {
            loadavg: String::new(),
            order: vec![h, s],
            runs: vec![(h, run(a, 1.0)), (s, run(b, 2.0))],
            steal_ms: Vec::new(),
        };
        let sat = Saturation {
            subjects: vec![h, s],
            rounds: vec![round(4e6, 1e6), round(3e6, 0.5e6), round(5e6, 1e6)],
            seconds: 1.0,
        };
        let Some([(_, fps), (_, per_cpu), _]) = sat.ratios(296) else {
            panic!("stock is a subject");
        };
        assert_eq!((fps.0.median(), fps.0.min(), fps.0.max()), (5.0, 4.0, 6.0));
        // Per CPU-second: hyphae used half the CPU time, so twice the ratio.
        assert_eq!(per_cpu.0.median(), 10.0);
        assert!(sat.ratios(1340).is_some_and(|r| r[0].1.0.rounds() == 0));
        let doc = sat.json();
        assert_eq!(doc["summary"][0]["frames_per_s"]["median"], 4e6);
        assert_eq!(doc["ratios_hyphae_over_stock"][0]["conclusive"], true);
    }
}
