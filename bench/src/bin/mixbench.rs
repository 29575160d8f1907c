//! Mixed transit benchmark: many flows to many destinations through a router, over TCP and
//! QUIC links, for `hyphae-router` and, in the same run, stock mycelium 0.7.10.
//!
//! ```text
//! cargo build --release -p hyphae-router -p hyphae-bench --bins
//! target/release/mixbench --json bench/results/mixbench.json
//! ```
//!
//! The router under test (a child process) dials two fake peers (`hyphae_bench::fake_peer`):
//! the sender announces its own /64, the sink announces `--subnets` /64s (4,096), each with its
//! own key, as a node does. The router spreads TCP dials over its workers, so with
//! `--workers 2` the two links run on different workers; the workers each link landed on are
//! read from the router's `peer up` log lines and printed.
//!
//! Traffic, per link type (TCP, QUIC) and frame size (296 B and 1340 B; on QUIC also 1472 B,
//! a full-MTU TUN packet, larger than the reference's datagram size):
//!
//! * `single`: every frame to one destination /64, the best case;
//! * `mix`: frame by frame to all of the sink's /64s in a fixed pseudo-random order.
//!
//! Each run sends as fast as the link takes frames for a warm-up and `--seconds`, then stops
//! and waits for what is in flight. It counts frames sent (handed to the socket or to quinn),
//! delivered to the sink and dropped (sent minus delivered), the delivered rate over the
//! measured window (frames/s, Gbit/s of whole frames), and the router's CPU seconds from
//! `/proc/PID/stat` over that window. Runs take turns: in each of `--rounds` rounds every case
//! runs on hyphae and then on stock, so both see the same machine state; the summary gives the
//! median and range over rounds, the mix over single ratio per router (goal: within 20 %) and
//! hyphae over stock (goal over QUIC: at least 3x).
//!
//! The reference tears a QUIC link down when a data frame does not fit in a datagram and
//! redials it (WIRE.md 1.3). That is reported as link resets and the frames delivered anyway;
//! hyphae carries such frames on the link's stream. Nothing here waits without a limit.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use hyphae_bench::fake_peer::{FrameSet, Prefixes};
use hyphae_bench::sys::{self, Machine};
use serde_json::{Value, json};

#[path = "mixbench/report.rs"]
mod report;
#[path = "mixbench/setup.rs"]
mod setup;

use report::{RunResult, Summary, compare, print_summary, summarize};
use setup::Setup;

#[derive(Parser, Debug)]
#[command(about = "Mixed transit: many flows, many destinations, TCP and QUIC, hyphae and stock")]
struct Args {
    /// The hyphae router binary (default: `hyphae-router` next to this one).
    #[arg(long)]
    router: Option<PathBuf>,
    /// Stock mycelium 0.7.10, measured after hyphae in every round (default:
    /// $HYPHAE_STOCK_MYCELIUM, else ../shared/bin/mycelium-0.7.10 beside the workspace, if
    /// there).
    #[arg(long)]
    stock: Option<PathBuf>,
    /// Do not measure stock mycelium.
    #[arg(long, conflicts_with = "stock_only")]
    no_stock: bool,
    /// Measure stock mycelium only.
    #[arg(long)]
    stock_only: bool,
    /// Leave out the floor: the same traffic from the sender straight to the sink over one
    /// link of the same kind, no router between (measured last in every round).
    #[arg(long)]
    no_direct: bool,
    /// hyphae's I/O driver: auto, uring or portable.
    #[arg(long, default_value = "auto")]
    driver: String,
    /// hyphae's data-plane workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Link types, comma-separated.
    #[arg(long, value_delimiter = ',', default_values = ["tcp", "quic"])]
    links: Vec<LinkKind>,
    /// Traffic patterns, comma-separated.
    #[arg(long, value_delimiter = ',', default_values = ["single", "mix"])]
    traffic: Vec<Traffic>,
    /// Frame sizes in bytes (whole frames, headers included), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [296usize, 1340])]
    sizes: Vec<usize>,
    /// On QUIC links, also this frame size, above the reference's datagram size (0: not).
    #[arg(long, default_value_t = 1472)]
    oversize: usize,
    /// Destination /64s the sink announces (the mix cycles through all of them).
    #[arg(long, default_value_t = 4096)]
    subnets: usize,
    /// Order of the mix's destinations.
    #[arg(long, value_enum, default_value = "shuffled")]
    order: Order,
    /// Rounds; every case runs once per round and router.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds measured per run, after the warm-up.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Seconds of warm-up per run (its frames count towards sent and dropped, not the rate).
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// At most this many seconds waiting for frames in flight after a run.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Who dials: the router (both links its static peers) or the fake peers.
    #[arg(long, value_enum, default_value = "router")]
    dial: Dialer,
    /// Write every figure, per run, as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A CI smoke run: one round of 0.3 s runs (0.1 s warm-up, 3 s drain at most).
    #[arg(long)]
    quick: bool,
    /// Keep the routers' logs and files (in a directory under $TMPDIR) after the run.
    #[arg(long)]
    keep_logs: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum LinkKind {
    Tcp,
    Quic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Traffic {
    /// One flow to one destination /64.
    Single,
    /// Frame by frame to every destination /64.
    Mix,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Order {
    /// A fixed pseudo-random permutation.
    Shuffled,
    /// Destination 0, 1, 2, ... in turn.
    RoundRobin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Dialer {
    /// The router dials both fake peers (its static peers).
    Router,
    /// The fake peers dial the router.
    Peers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Impl {
    Hyphae,
    Stock,
    /// No router: the sender's link goes straight to the sink (the generator's floor).
    Direct,
}

macro_rules! names {
    ($($t:ty { $($v:ident => $s:literal),* })*) => {$(
        impl $t {
            fn name(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
        }
    )*};
}

names! {
    LinkKind { Tcp => "tcp", Quic => "quic" }
    Traffic { Single => "single", Mix => "mix" }
    Impl { Hyphae => "hyphae", Stock => "stock", Direct => "direct" }
    Order { Shuffled => "shuffled", RoundRobin => "round-robin" }
    Dialer { Router => "router", Peers => "peers" }
}

/// One measured case: a traffic pattern and a frame size on a link type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Case {
    link: LinkKind,
    traffic: Traffic,
    frame_len: usize,
}

impl Case {
    fn label(&self) -> String {
        format!(
            "{:<4} {:<6} {:>4} B",
            self.link.name(),
            self.traffic.name(),
            self.frame_len
        )
    }
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.rounds = 1;
        args.seconds = 0.3;
        args.warmup = 0.1;
        args.drain = 3.0;
    }
    let bins = Bins::find(&args)?;
    let machine = Machine::here();
    let command: Vec<String> = std::env::args().collect();
    println!("mixbench: {}", command.join(" "));
    let load = sys::loadavg();
    println!("machine: {machine}; load average {load:.2}");
    bins.print();

    let t = Instant::now();
    let sender = Arc::new(Prefixes::new(0x51, 1));
    let sink = Arc::new(Prefixes::new(0x52, args.subnets));
    println!(
        "keys: {} destination /64s derived in {:.1} s",
        sink.len(),
        t.elapsed().as_secs_f64()
    );
    let traffic = TrafficSets::new(&args, &sender, &sink)?;

    let dir = std::env::temp_dir().join(format!("hyphae-mixbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut runs: Vec<RunResult> = Vec::new();
    let mut setups_json = Vec::new();
    let mut failed_setups = 0;
    for &link in &args.links {
        let mut setups = Vec::new();
        for imp in bins.impls() {
            match Setup::start(imp, link, &args, &bins, &traffic, &dir) {
                Ok(s) => {
                    s.print();
                    setups_json.push(s.json());
                    setups.push(s);
                }
                Err(e) => {
                    failed_setups += 1;
                    let e = format!("{e:#}");
                    println!("{} over {}: did not start: {e}", imp.name(), link.name());
                    setups_json.push(json!({
                        "impl": imp.name(), "link": link.name(), "error": e,
                    }));
                }
            }
        }
        if setups.is_empty() {
            continue;
        }
        for round in 0..args.rounds {
            for case in cases(&args, link) {
                for s in &mut setups {
                    let r = s.run(case, round, &args, &traffic);
                    r.print();
                    runs.push(r);
                }
            }
        }
    }

    let summary = summarize(&runs);
    print_summary(&summary);
    let comparisons = compare(&summary, machine.cores);
    let errors = runs.iter().filter(|r| r.error.is_some()).count() + failed_setups;
    if let Some(path) = &args.json {
        let doc = json!({
            "command": command,
            "started_unix": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            "machine": {
                "cpu": machine.cpu, "cores": machine.cores, "mem_gib": machine.mem_gib,
                "kernel": machine.kernel, "loadavg_at_start": load,
            },
            "binaries": bins.json(),
            "settings": {
                "driver": args.driver, "workers": args.workers, "subnets": args.subnets,
                "order": args.order.name(), "rounds": args.rounds, "seconds": args.seconds,
                "warmup": args.warmup, "drain_max": args.drain, "dial": args.dial.name(),
                "links": args.links.iter().map(|l| l.name()).collect::<Vec<_>>(),
                "traffic": args.traffic.iter().map(|t| t.name()).collect::<Vec<_>>(),
                "sizes": args.sizes, "oversize": args.oversize, "quick": args.quick,
            },
            "setups": setups_json,
            "runs": runs.iter().map(RunResult::json).collect::<Vec<_>>(),
            "summary": summary.iter().map(Summary::json).collect::<Vec<_>>(),
            "comparisons": comparisons,
            "errors": errors,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if args.keep_logs || errors > 0 {
        println!("logs: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if errors > 0 {
        bail!("{errors} run(s) or setup(s) failed (above)");
    }
    Ok(())
}

/// The cases of one link type, in the order each round runs them: the sizes, each single then
/// mix; on QUIC the oversize frames last, since the reference resets links on them.
fn cases(args: &Args, link: LinkKind) -> Vec<Case> {
    let mut sizes = args.sizes.clone();
    if link == LinkKind::Quic && args.oversize > 0 && !sizes.contains(&args.oversize) {
        sizes.push(args.oversize);
    }
    let mut v = Vec::new();
    for frame_len in sizes {
        for &traffic in &args.traffic {
            v.push(Case {
                link,
                traffic,
                frame_len,
            });
        }
    }
    v
}

/// The binaries under test.
struct Bins {
    hyphae: Option<PathBuf>,
    stock: Option<PathBuf>,
    /// Whether the direct floor is measured too.
    direct: bool,
    hyphae_version: Option<String>,
    stock_version: Option<String>,
    commit: Option<String>,
}

impl Bins {
    fn find(args: &Args) -> Result<Self> {
        let hyphae = if args.stock_only {
            None
        } else {
            let p = match &args.router {
                Some(p) => p.clone(),
                None => std::env::current_exe()?.with_file_name("hyphae-router"),
            };
            if !p.is_file() {
                bail!(
                    "no router at {} (build it: cargo build --release -p hyphae-router, or \
                     give --router PATH)",
                    p.display()
                );
            }
            Some(p)
        };
        let stock = if args.no_stock {
            None
        } else {
            let default = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/bin/mycelium-0.7.10")
                .canonicalize()
                .ok();
            let p = args
                .stock
                .clone()
                .or_else(|| std::env::var_os("HYPHAE_STOCK_MYCELIUM").map(PathBuf::from))
                .or(default);
            match p {
                Some(p) if p.is_file() => Some(p),
                Some(p) if args.stock.is_some() || args.stock_only => {
                    bail!("no stock mycelium at {}", p.display())
                }
                Some(p) => {
                    println!("stock mycelium: not found at {}, not measured", p.display());
                    None
                }
                None if args.stock_only => bail!("--stock-only needs a stock binary"),
                None => None,
            }
        };
        let commit = Command::new("git")
            .args([
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "describe",
                "--always",
                "--dirty",
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        Ok(Self {
            direct: !args.no_direct && !args.stock_only,
            hyphae_version: hyphae.as_deref().and_then(sys::version_of),
            stock_version: stock.as_deref().and_then(sys::version_of),
            hyphae,
            stock,
            commit,
        })
    }

    fn impls(&self) -> Vec<Impl> {
        let mut v = Vec::new();
        if self.hyphae.is_some() {
            v.push(Impl::Hyphae);
        }
        if self.stock.is_some() {
            v.push(Impl::Stock);
        }
        if self.direct {
            v.push(Impl::Direct);
        }
        v
    }

    fn print(&self) {
        if let Some(p) = &self.hyphae {
            println!(
                "hyphae: {} ({}, workspace {})",
                p.display(),
                self.hyphae_version.as_deref().unwrap_or("version unknown"),
                self.commit.as_deref().unwrap_or("commit unknown")
            );
        }
        if let Some(p) = &self.stock {
            println!(
                "stock: {} ({})",
                p.display(),
                self.stock_version.as_deref().unwrap_or("version unknown")
            );
        }
    }

    fn json(&self) -> Value {
        json!({
            "hyphae": self.hyphae.as_ref().map(|p| p.display().to_string()),
            "hyphae_version": self.hyphae_version,
            "workspace_commit": self.commit,
            "stock": self.stock.as_ref().map(|p| p.display().to_string()),
            "stock_version": self.stock_version,
        })
    }
}

/// The frame sets of every case, built once and shared by both routers.
struct TrafficSets {
    sets: BTreeMap<(Traffic, usize), Arc<FrameSet>>,
    src: Ipv6Addr,
    sender: Arc<Prefixes>,
    sink: Arc<Prefixes>,
}

impl TrafficSets {
    fn new(args: &Args, sender: &Arc<Prefixes>, sink: &Arc<Prefixes>) -> Result<Self> {
        let src = sender.address(0);
        let mut sizes = args.sizes.clone();
        if args.oversize > 0 {
            sizes.push(args.oversize);
        }
        let order = order(sink.len(), args.order);
        let mix: Vec<Ipv6Addr> = order.iter().map(|&i| sink.address(i)).collect();
        let mut sets = BTreeMap::new();
        for &size in &sizes {
            for &t in &args.traffic {
                let dsts = match t {
                    Traffic::Single => vec![sink.address(0)],
                    Traffic::Mix => mix.clone(),
                };
                let set = FrameSet::new(src, &dsts, size, None)?;
                sets.insert((t, size), Arc::new(set));
            }
        }
        Ok(Self {
            sets,
            src,
            sender: sender.clone(),
            sink: sink.clone(),
        })
    }

    /// Probes to the sink's destinations `ids`.
    fn probes(&self, ids: &[u32]) -> Result<Arc<FrameSet>> {
        let dsts: Vec<Ipv6Addr> = ids.iter().map(|&i| self.sink.address(i as usize)).collect();
        Ok(Arc::new(FrameSet::new(self.src, &dsts, 296, Some(ids))?))
    }
}

/// The order of the mix: a fixed permutation of `0..n` (xorshift64*-driven Fisher-Yates with a
/// constant seed, so every run and both routers see the same sequence) or `0..n` itself.
fn order(n: usize, order: Order) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    if order == Order::Shuffled {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in (1..n).rev() {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
            v.swap(i, (r % (i as u64 + 1)) as usize);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffled_order_is_a_fixed_permutation() {
        let a = order(4096, Order::Shuffled);
        assert_eq!(a, order(4096, Order::Shuffled));
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..4096).collect::<Vec<_>>());
        assert_ne!(a, s);
        assert_eq!(order(3, Order::RoundRobin), vec![0, 1, 2]);
    }
}
