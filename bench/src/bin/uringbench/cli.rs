//! The command line and the order of runs: rounds in which every variant takes its turn, the
//! system-call counting runs, then the summary and the JSON file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use serde_json::json;

use super::load::{HEADER, MIN_BODY};
use super::report::{git_commit, print_summary, print_trial, summarize, utc_now};
use super::stats::{self, MachineCpu, MachineInfo};
use super::sys::{self, TaskRun};
use super::trial::{DISTURBED_VCPU, Shape, Trial, Variant, run_trial};

/// The command line (defaults: 5 rounds of 2 s, 296 and 1340 B, 1 and 8 connections, all four
/// variants, forwarder on vCPU 1 and load on vCPU 0).
#[derive(Parser, Debug)]
#[command(
    name = "uringbench",
    about = "The forwarding core of one data-plane worker, pinned, over loopback TCP: the \
             router's portable (epoll) driver, a raw io-uring loop, and that loop on epoll"
)]
pub(super) struct Args {
    /// Rounds: in each, every variant runs once per frame size and connection count.
    #[arg(long, default_value_t = 5)]
    pub(super) rounds: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 2.0)]
    pub(super) seconds: f64,
    /// Seconds each run forwards before it is measured (TCP windows grow meanwhile).
    #[arg(long, default_value_t = 0.5)]
    pub(super) warmup: f64,
    /// Frame sizes in bytes, headers included.
    #[arg(long, value_delimiter = ',', default_values_t = [296usize, 1340])]
    pub(super) sizes: Vec<usize>,
    /// Connection counts: N inbound and as many outbound.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8])]
    pub(super) conns: Vec<usize>,
    /// Variants to run.
    #[arg(long, value_delimiter = ',', value_enum,
          default_values_t = [Variant::Epoll, Variant::Uring, Variant::EpollLoop])]
    pub(super) variants: Vec<Variant>,
    /// vCPU of the forwarding thread.
    #[arg(long, default_value_t = 1)]
    pub(super) fwd_cpu: usize,
    /// vCPU of the generator and sink threads.
    #[arg(long, default_value_t = 0)]
    pub(super) load_cpu: usize,
    /// Frames a generator sends to one output before it moves to the next (1: every frame
    /// to the next output, so with several outputs no two neighbours share one).
    #[arg(long, default_value_t = 1)]
    pub(super) run: usize,
    /// Offered load in Gbit/s of frames, all generators together (0: as fast as they
    /// can, which saturates the forwarder or the load vCPU).
    #[arg(long, default_value_t = 0.0)]
    pub(super) offered: f64,
    /// TCP_NOTSENT_LOWAT on the forwarder's sockets, as the router sets it (0: unset).
    #[arg(long, default_value_t = 128 * 1024)]
    pub(super) notsent_lowat: u32,
    /// (a): bytes queued for one output before its readers wait.
    #[arg(long, default_value_t = 4 << 20)]
    pub(super) queue_limit: usize,
    /// (c), (d): buffers in the pool (a power of two).
    #[arg(long, default_value_t = 64)]
    pub(super) bufs: u16,
    /// (c), (d): bytes per buffer.
    #[arg(long, default_value_t = 64 * 1024)]
    pub(super) buf_size: u32,
    /// (c): the task-run mode to ask for first (then falls back: defer, coop, plain).
    #[arg(long, value_enum, default_value_t = TaskRun::Defer)]
    pub(super) taskrun: TaskRun,
    /// Skip the extra runs that count system calls with perf tracepoints.
    #[arg(long)]
    pub(super) no_syscalls: bool,
    /// Times a disturbed run (other work above 10 % of a vCPU) is redone.
    #[arg(long, default_value_t = 2)]
    pub(super) retries: usize,
    /// Wait up to this many seconds for a quiet machine before starting.
    #[arg(long, default_value_t = 0.0)]
    pub(super) wait_quiet: f64,
    /// CI smoke run: one round, 0.1 s warm-up and 0.2 s measured per run, no redoing.
    #[arg(long)]
    pub(super) quick: bool,
    /// Write every figure to this file as JSON.
    #[arg(long)]
    pub(super) json: Option<PathBuf>,
}

/// Runs every round, then the counting runs, prints the tables and writes the JSON file.
pub(super) fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.rounds = 1;
        args.warmup = 0.1;
        args.seconds = 0.2;
        args.retries = 0;
    }
    validate(&args)?;
    // The main thread only samples; keep it off the forwarder's vCPU.
    sys::pin_to_cpu(args.load_cpu).context("pinning the main thread")?;
    let machine = MachineInfo::read();
    let ticks = sys::clock_ticks();
    let command: Vec<String> = std::env::args().collect();
    println!(
        "uringbench: {} × {}, {:.1} GiB, Linux {}, load average {}",
        machine.vcpus, machine.cpu_model, machine.mem_gib, machine.kernel, machine.loadavg_at_start
    );
    println!("command: {}", command.join(" "));
    let features = sys::probe_kernel();
    println!("\nio_uring on this kernel:");
    for (k, v) in &features {
        println!("  {k}: {v}");
    }
    if args.wait_quiet > 0.0 {
        wait_quiet(args.wait_quiet, ticks)?;
    }
    let shapes: Vec<Shape> = args
        .sizes
        .iter()
        .flat_map(|&size| args.conns.iter().map(move |&conns| Shape { size, conns }))
        .collect();
    let started = Instant::now();
    let started_utc = utc_now();
    let mut trials = Vec::new();
    println!(
        "\n{} round(s) of {} s measured after {} s warm-up; forwarder on vCPU {}, load on \
         vCPU {}",
        args.rounds, args.seconds, args.warmup, args.fwd_cpu, args.load_cpu
    );
    for round in 0..args.rounds {
        for &shape in &shapes {
            let mut order = args.variants.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            for v in order {
                let mut t = run_trial(&args, v, shape, false, ticks)?;
                let mut redone = 0;
                while t.disturbed() && redone < args.retries {
                    redone += 1;
                    t = run_trial(&args, v, shape, false, ticks)?;
                }
                t.round = round;
                t.redone = redone;
                print_trial(&t);
                trials.push(t);
            }
        }
    }
    let mut counted = Vec::new();
    let tracepoints = [
        stats::tracepoint_id("raw_syscalls", "sys_enter"),
        stats::tracepoint_id("syscalls", "sys_enter_io_uring_enter"),
        stats::tracepoint_id("syscalls", "sys_enter_epoll_wait"),
    ];
    let syscall_note = match (args.no_syscalls, tracepoints) {
        (true, _) => Some("skipped (--no-syscalls)".to_string()),
        (false, [Some(_), Some(_), Some(_)]) => None,
        _ => Some("skipped: tracefs tracepoints not readable".to_string()),
    };
    if syscall_note.is_none() {
        println!("\nsystem-call counting runs (perf tracepoints on the forwarding thread):");
        for &shape in &shapes {
            for &v in &args.variants {
                match run_trial(&args, v, shape, true, ticks) {
                    Ok(t) => {
                        print_trial(&t);
                        counted.push(t);
                    }
                    Err(e) => {
                        println!("  {} {}: counting failed: {e:#}", shape.label(), v.label());
                        break;
                    }
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let summary = summarize(&args, &shapes, &trials);
    print_summary(&args, &shapes, &trials, &counted, syscall_note.as_deref());
    if let Some(path) = &args.json {
        let doc = json!({
            "benchmark": "uringbench",
            "started_utc": started_utc,
            "git_commit": git_commit(),
            "command": command,
            "machine": machine.to_json(),
            "kernel": machine.kernel,
            "io_uring_features": features.iter().cloned().collect::<BTreeMap<_, _>>(),
            "settings": {
                "rounds": args.rounds, "seconds": args.seconds, "warmup": args.warmup,
                "sizes": args.sizes, "connections": args.conns,
                "variants": args.variants.iter().map(|v| v.key()).collect::<Vec<_>>(),
                "fwd_cpu": args.fwd_cpu, "load_cpu": args.load_cpu, "run": args.run,
                "offered_gbit_per_s": (args.offered > 0.0).then_some(args.offered),
                "notsent_lowat": args.notsent_lowat, "queue_limit": args.queue_limit,
                "bufs": args.bufs, "buf_size": args.buf_size,
                "taskrun": format!("{:?}", args.taskrun), "retries": args.retries,
                "quick": args.quick,
            },
            "elapsed_s": elapsed,
            "runs": trials.iter().map(Trial::to_json).collect::<Vec<_>>(),
            "syscall_runs": counted.iter().map(Trial::to_json).collect::<Vec<_>>(),
            "syscall_note": syscall_note,
            "summary": summary,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

fn validate(a: &Args) -> Result<()> {
    ensure!(
        a.rounds > 0 && a.seconds > 0.0 && a.warmup >= 0.0,
        "bad durations"
    );
    ensure!(!a.variants.is_empty(), "no variants");
    ensure!(a.run > 0, "--run must be at least 1");
    for &s in &a.sizes {
        ensure!(
            (HEADER + MIN_BODY..=HEADER + usize::from(u16::MAX)).contains(&s),
            "frame size {s} out of range {}..={}",
            HEADER + MIN_BODY,
            HEADER + usize::from(u16::MAX)
        );
    }
    for &c in &a.conns {
        ensure!(
            (1..=64).contains(&c),
            "connection count {c} out of range 1..=64"
        );
    }
    let vcpus = std::thread::available_parallelism().map_or(1, usize::from);
    ensure!(
        a.fwd_cpu < vcpus && a.load_cpu < vcpus,
        "this machine has {vcpus} vCPUs"
    );
    if a.fwd_cpu == a.load_cpu {
        println!("note: forwarder and load share vCPU {}", a.fwd_cpu);
    }
    Ok(())
}

/// Waits until other work takes under 10 % of a vCPU over a second, at most `limit` s.
fn wait_quiet(limit: f64, ticks: u64) -> Result<()> {
    let until = Instant::now() + Duration::from_secs_f64(limit);
    loop {
        let a = MachineCpu::read()?;
        std::thread::sleep(Duration::from_secs(1));
        let other = a.other_vcpu(&MachineCpu::read()?, 1.0, ticks);
        if other < DISTURBED_VCPU {
            println!("machine quiet: other work {:.0} % of a vCPU", other * 100.0);
            return Ok(());
        }
        if Instant::now() >= until {
            println!(
                "machine still busy after {limit} s (other work {:.0} % of a vCPU): going on",
                other * 100.0
            );
            return Ok(());
        }
    }
}
