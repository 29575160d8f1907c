//! One run of one variant: the connections, the forwarder thread, the load, the measured
//! window, and the figures it yields.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use super::cli::Args;
use super::load;
use super::stats::{self, MachineCpu, ThreadCpu};
use super::sys::{self, TraceCounter};
use super::{epoll_fwd, tokio_fwd, uring_fwd};

/// Other work above this share of a vCPU during a run marks it disturbed.
pub(super) const DISTURBED_VCPU: f64 = 0.10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(super) enum Variant {
    /// (a) tokio current-thread, epoll.
    Epoll,
    /// (c) a loop on the io-uring crate.
    #[value(name = "io-uring")]
    Uring,
    /// (d) loop (c) on epoll: same buffers and frame handling, readiness instead of
    /// completions.
    EpollLoop,
}

impl Variant {
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Epoll => "(a) epoll",
            Self::Uring => "(c) io-uring",
            Self::EpollLoop => "(d) epoll loop",
        }
    }

    pub(super) fn key(self) -> &'static str {
        match self {
            Self::Epoll => "epoll",
            Self::Uring => "io-uring",
            Self::EpollLoop => "epoll-loop",
        }
    }
}

/// A frame size and connection count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Shape {
    pub(super) size: usize,
    pub(super) conns: usize,
}

impl Shape {
    pub(super) fn label(self) -> String {
        format!("{} B, {}→{}", self.size, self.conns, self.conns)
    }
}

/// System calls of the forwarding thread over a window.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Syscalls {
    pub(super) total: u64,
    pub(super) enter: u64,
    pub(super) epoll: u64,
}

/// One run's figures.
#[derive(Debug, Clone)]
pub(super) struct Trial {
    pub(super) variant: Variant,
    pub(super) shape: Shape,
    pub(super) round: usize,
    pub(super) counted: bool,
    pub(super) redone: usize,
    pub(super) secs: f64,
    pub(super) frames: f64,
    pub(super) frames_total: u64,
    pub(super) cpu_s: f64,
    pub(super) iowq_s: f64,
    pub(super) user_s: f64,
    pub(super) sys_s: f64,
    pub(super) wait_s: f64,
    pub(super) vcsw: u64,
    pub(super) ivcsw: u64,
    /// Loop turns in the window: (c) `io_uring_enter` calls, (d) `epoll_wait` calls.
    pub(super) turns: Option<u64>,
    pub(super) other_vcpu: f64,
    pub(super) steal_vcpu: f64,
    pub(super) fwd_core_busy: f64,
    pub(super) syscalls: Option<Syscalls>,
    pub(super) setup: String,
    pub(super) detail: Option<uring_fwd::Report>,
}

impl Trial {
    pub(super) fn fps(&self) -> f64 {
        self.frames / self.secs
    }

    pub(super) fn gbps(&self) -> f64 {
        self.fps() * self.shape.size as f64 * 8.0 / 1e9
    }

    /// Forwarding CPU (thread plus io_uring workers) in vCPUs.
    pub(super) fn util(&self) -> f64 {
        (self.cpu_s + self.iowq_s) / self.secs
    }

    pub(super) fn per_cpu_s(&self) -> f64 {
        self.frames / (self.cpu_s + self.iowq_s).max(1e-9)
    }

    pub(super) fn disturbed(&self) -> bool {
        self.other_vcpu > DISTURBED_VCPU
    }

    pub(super) fn to_json(&self) -> Value {
        let per_frame = |v: u64| v as f64 / self.frames.max(1.0);
        json!({
            "variant": self.variant.key(),
            "frame_bytes": self.shape.size,
            "connections": self.shape.conns,
            "round": self.round,
            "syscall_counting_run": self.counted,
            "redone": self.redone,
            "seconds": self.secs,
            "frames": self.frames,
            "frames_per_s": self.fps(),
            "gbit_per_s": self.gbps(),
            "forwarder_cpu_s": self.cpu_s,
            "io_worker_cpu_s": self.iowq_s,
            "forwarder_user_s": self.user_s,
            "forwarder_sys_s": self.sys_s,
            "forwarder_vcpu": self.util(),
            "frames_per_cpu_s": self.per_cpu_s(),
            "runqueue_wait_s": self.wait_s,
            "voluntary_switches": self.vcsw,
            "involuntary_switches": self.ivcsw,
            "loop_turns": self.turns,
            "loop_turns_per_frame": self.turns.map(per_frame),
            "syscalls": self.syscalls.map(|s| json!({
                "total": s.total, "io_uring_enter": s.enter, "epoll_wait": s.epoll,
                "total_per_frame": per_frame(s.total),
                "io_uring_enter_per_frame": per_frame(s.enter),
                "epoll_wait_per_frame": per_frame(s.epoll),
            })),
            "other_work_vcpu": self.other_vcpu,
            "steal_vcpu": self.steal_vcpu,
            "forwarder_core_busy": self.fwd_core_busy,
            "frames_whole_run": self.frames_total,
            "ring_setup": self.setup,
            "loop_whole_run": self.detail.as_ref().map(|d| json!({
                "turns": d.turns, "events": d.events, "recvs": d.recvs, "sends": d.sends,
                "iovecs": d.iovecs, "partial_sends": d.partial_sends,
                "starved": d.starved, "rearms": d.rearms, "eagain": d.eagain,
                "multishot_more": d.multishot_more, "split_headers": d.split_headers,
            })),
        })
    }
}

/// What the forwarder thread returns.
enum Outcome {
    Setup(String),
    Loop(uring_fwd::Report),
}

/// Counters read at the start and end of a window.
struct Snapshot {
    at: Instant,
    delivered: u64,
    thread: ThreadCpu,
    iowq_ns: u64,
    machine: MachineCpu,
    turns: u64,
    syscalls: Option<Syscalls>,
}

impl Snapshot {
    fn take(
        tid: i32,
        delivered: &AtomicU64,
        turns: &AtomicU64,
        counters: &mut Option<[TraceCounter; 3]>,
    ) -> Result<Self> {
        let at = Instant::now();
        let delivered = delivered.load(Relaxed);
        let turns = turns.load(Relaxed);
        let syscalls = match counters {
            Some([t, e, p]) => Some(Syscalls {
                total: t.read()?,
                enter: e.read()?,
                epoll: p.read()?,
            }),
            None => None,
        };
        Ok(Self {
            at,
            delivered,
            turns,
            syscalls,
            thread: stats::thread_cpu(tid)?,
            iowq_ns: stats::io_worker_ns(),
            machine: MachineCpu::read()?,
        })
    }
}

/// One run: wire the connections, start the forwarder, the sinks and the generators, warm
/// up, measure a window, stop the generators and check that everything sent arrived.
pub(super) fn run_trial(
    args: &Args,
    variant: Variant,
    shape: Shape,
    count_syscalls: bool,
    ticks: u64,
) -> Result<Trial> {
    let w = load::wire(shape.conns, shape.conns, args.notsent_lowat)?;
    let turns = Arc::new(AtomicU64::new(0));
    let (tid_tx, tid_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<Result<Outcome>>();
    let (fwd_in, fwd_out) = (w.fwd_in, w.fwd_out);
    let (cpu, limit) = (args.fwd_cpu, args.queue_limit);
    let cfg = uring_fwd::Config {
        bufs: args.bufs,
        buf_size: args.buf_size,
        taskrun: args.taskrun,
    };
    let e = turns.clone();
    let fwd = std::thread::Builder::new()
        .name("forwarder".into())
        .spawn(move || {
            let r = (|| -> Result<Outcome> {
                sys::pin_to_cpu(cpu).context("pinning the forwarder")?;
                tid_tx.send(stats::current_tid()?)?;
                Ok(match variant {
                    Variant::Epoll => {
                        tokio_fwd::run_epoll(fwd_in, fwd_out, limit)?;
                        Outcome::Setup("epoll".into())
                    }
                    Variant::Uring => Outcome::Loop(uring_fwd::run(fwd_in, fwd_out, cfg, &e)?),
                    Variant::EpollLoop => Outcome::Loop(epoll_fwd::run(
                        fwd_in,
                        fwd_out,
                        cfg.bufs,
                        cfg.buf_size as usize,
                        &e,
                    )?),
                })
            })();
            let _ = done_tx.send(r);
        })?;
    let Ok(tid) = tid_rx.recv_timeout(Duration::from_secs(10)) else {
        let why = match done_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Err(e)) => format!("{e:#}"),
            _ => "no word from it".into(),
        };
        bail!("forwarder did not start: {why}");
    };
    let mut load = load::Load::start(
        w.gen_ends,
        w.sink_ends,
        shape.size,
        args.run,
        (args.offered > 0.0).then(|| args.offered * 1e9 / 8.0 / shape.size as f64),
        args.load_cpu,
    )?;
    std::thread::sleep(Duration::from_secs_f64(args.warmup));
    let mut counters = None;
    if count_syscalls {
        let open = |cat: &str, name: &str| -> Result<TraceCounter> {
            let id = stats::tracepoint_id(cat, name).context("tracepoint")?;
            Ok(TraceCounter::open(tid, id)?)
        };
        counters = Some([
            open("raw_syscalls", "sys_enter")?,
            open("syscalls", "sys_enter_io_uring_enter")?,
            open("syscalls", "sys_enter_epoll_wait")?,
        ]);
    }
    let s0 = Snapshot::take(tid, &load.delivered, &turns, &mut counters);
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    let s1 = Snapshot::take(tid, &load.delivered, &turns, &mut counters);
    let sent = load.stop_generators();
    let Ok(outcome) = done_rx.recv_timeout(Duration::from_secs(60)) else {
        // Its threads are stuck in blocking calls: nothing to clean up but the process.
        eprintln!(
            "uringbench: {} {} did not finish within 60 s of the generators stopping",
            shape.label(),
            variant.label()
        );
        std::process::exit(2);
    };
    let _ = fwd.join();
    let outcome = outcome.with_context(|| format!("{} {}", shape.label(), variant.label()))?;
    let sent = sent?;
    let got = load.join_sinks()?;
    ensure!(sent == got, "{sent} frames sent, {got} delivered");
    let (s0, s1) = (s0?, s1?);
    let secs = (s1.at - s0.at).as_secs_f64();
    let (t0, t1) = (s0.thread, s1.thread);
    let (setup, detail) = match outcome {
        Outcome::Setup(s) => (s, None),
        Outcome::Loop(r) => (r.setup.to_string(), Some(r)),
    };
    let delta = |a: Option<Syscalls>, b: Option<Syscalls>| {
        let (a, b) = (a?, b?);
        Some(Syscalls {
            total: b.total - a.total,
            enter: b.enter - a.enter,
            epoll: b.epoll - a.epoll,
        })
    };
    Ok(Trial {
        variant,
        shape,
        round: 0,
        counted: count_syscalls,
        redone: 0,
        secs,
        frames: (s1.delivered - s0.delivered) as f64 / shape.size as f64,
        frames_total: got,
        cpu_s: (t1.run_ns - t0.run_ns) as f64 / 1e9,
        iowq_s: s1.iowq_ns.saturating_sub(s0.iowq_ns) as f64 / 1e9,
        user_s: (t1.utime - t0.utime) as f64 / ticks as f64,
        sys_s: (t1.stime - t0.stime) as f64 / ticks as f64,
        wait_s: (t1.wait_ns - t0.wait_ns) as f64 / 1e9,
        vcsw: t1.vcsw - t0.vcsw,
        ivcsw: t1.ivcsw - t0.ivcsw,
        turns: matches!(variant, Variant::Uring | Variant::EpollLoop).then(|| s1.turns - s0.turns),
        other_vcpu: s0.machine.other_vcpu(&s1.machine, secs, ticks),
        steal_vcpu: s0.machine.steal_vcpu(&s1.machine, secs, ticks),
        fwd_core_busy: s0.machine.cpu_busy(&s1.machine, args.fwd_cpu, secs, ticks),
        syscalls: delta(s0.syscalls, s1.syscalls),
        setup,
        detail,
    })
}
