//! What `/proc` says about the forwarding thread and the machine: CPU time, run-queue waits and
//! context switches of one thread, and how much CPU everything else took (other sessions' work
//! on this shared VM, and the hypervisor's steal).

use std::fs;
use std::sync::OnceLock;

use anyhow::{Context, Result};

/// One thread's counters.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ThreadCpu {
    /// Time on a CPU, ns (`schedstat`: exact, softirqs run in its context included).
    pub(super) run_ns: u64,
    /// Time runnable but waiting for a CPU, ns.
    pub(super) wait_ns: u64,
    /// User and system time, clock ticks (`stat`: sampled at the tick).
    pub(super) utime: u64,
    pub(super) stime: u64,
    /// Voluntary and involuntary context switches.
    pub(super) vcsw: u64,
    pub(super) ivcsw: u64,
}

/// Reads thread `tid` of this process.
pub(super) fn thread_cpu(tid: i32) -> Result<ThreadCpu> {
    let dir = format!("/proc/self/task/{tid}");
    let sched = fs::read_to_string(format!("{dir}/schedstat")).context("schedstat")?;
    let mut it = sched.split_whitespace().map(str::parse::<u64>);
    let run_ns = it
        .next()
        .and_then(Result::ok)
        .context("schedstat run time")?;
    let wait_ns = it
        .next()
        .and_then(Result::ok)
        .context("schedstat wait time")?;
    let (utime, stime) = stat_times(&fs::read_to_string(format!("{dir}/stat"))?)?;
    let status = fs::read_to_string(format!("{dir}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(ThreadCpu {
        run_ns,
        wait_ns,
        utime,
        stime,
        vcsw: field("voluntary_ctxt_switches:"),
        ivcsw: field("nonvoluntary_ctxt_switches:"),
    })
}

/// The `utime` and `stime` fields (14 and 15) of a `/proc/.../stat` line.
fn stat_times(stat: &str) -> Result<(u64, u64)> {
    // The command name (field 2) may hold spaces; fields after it follow its closing paren.
    let rest = stat.rsplit_once(')').context("stat line")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| -> Result<u64> { Ok(f.get(i).context("stat field")?.parse()?) };
    // `rest` starts at field 3.
    Ok((get(14 - 3)?, get(15 - 3)?))
}

/// CPU time of this process's io_uring worker threads (`iou-wrk-*`, `iou-sqp-*`), ns: work
/// the kernel moved off the forwarding thread, which belongs to its cost.
pub(super) fn io_worker_ns() -> u64 {
    let Ok(dir) = fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.starts_with("iou-wrk") || c.starts_with("iou-sqp"))
        })
        .filter_map(|e| fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Machine-wide CPU time, in clock ticks.
#[derive(Debug, Clone, Default)]
pub(super) struct MachineCpu {
    /// Busy time over all CPUs (user, nice, system, irq, softirq).
    pub(super) busy: u64,
    /// Time the hypervisor ran something else (steal), all CPUs.
    pub(super) steal: u64,
    /// Busy time per CPU.
    pub(super) per_cpu: Vec<u64>,
    /// This process (all its threads).
    pub(super) ours: u64,
    /// The kernel's softirq threads, which run this benchmark's network work when it piles up.
    pub(super) ksoftirqd: u64,
}

impl MachineCpu {
    /// Reads `/proc/stat`, this process and the `ksoftirqd` threads.
    pub(super) fn read() -> Result<Self> {
        let stat = fs::read_to_string("/proc/stat")?;
        let mut m = Self::default();
        for l in stat.lines().filter(|l| l.starts_with("cpu")) {
            let mut f = l.split_whitespace();
            let name = f.next().unwrap_or_default();
            let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal ...
            let busy = [0, 1, 2, 5, 6].iter().filter_map(|&i| v.get(i)).sum();
            if name == "cpu" {
                m.busy = busy;
                m.steal = v.get(7).copied().unwrap_or(0);
            } else {
                m.per_cpu.push(busy);
            }
        }
        let (u, s) = stat_times(&fs::read_to_string("/proc/self/stat")?)?;
        m.ours = u + s;
        m.ksoftirqd = ksoftirqd_pids()
            .iter()
            .filter_map(|p| fs::read_to_string(format!("/proc/{p}/stat")).ok())
            .filter_map(|s| stat_times(&s).ok())
            .map(|(u, s)| u + s)
            .sum();
        Ok(m)
    }

    /// vCPUs (fractions of one) that other work took from `self` to `later`, over `secs`.
    pub(super) fn other_vcpu(&self, later: &Self, secs: f64, ticks: u64) -> f64 {
        let busy = later.busy.saturating_sub(self.busy);
        let ours = later.ours.saturating_sub(self.ours) + later.ksoftirqd - self.ksoftirqd;
        busy.saturating_sub(ours) as f64 / ticks as f64 / secs
    }

    /// vCPUs the hypervisor stole from `self` to `later`.
    pub(super) fn steal_vcpu(&self, later: &Self, secs: f64, ticks: u64) -> f64 {
        later.steal.saturating_sub(self.steal) as f64 / ticks as f64 / secs
    }

    /// Busy fraction of CPU `cpu` from `self` to `later`.
    pub(super) fn cpu_busy(&self, later: &Self, cpu: usize, secs: f64, ticks: u64) -> f64 {
        let (a, b) = (self.per_cpu.get(cpu), later.per_cpu.get(cpu));
        match (a, b) {
            (Some(a), Some(b)) => b.saturating_sub(*a) as f64 / ticks as f64 / secs,
            _ => 0.0,
        }
    }
}

/// The `ksoftirqd/N` kernel threads (found once: they live as long as the machine).
fn ksoftirqd_pids() -> &'static [u32] {
    static PIDS: OnceLock<Vec<u32>> = OnceLock::new();
    PIDS.get_or_init(|| {
        let Ok(dir) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.starts_with("ksoftirqd/"))
            })
            .collect()
    })
}

/// This thread's id.
pub(super) fn current_tid() -> Result<i32> {
    let link = fs::read_link("/proc/thread-self")?;
    let tid = link
        .file_name()
        .and_then(|n| n.to_str())
        .context("/proc/thread-self")?;
    Ok(tid.parse()?)
}

/// The id of tracepoint `category/name` in tracefs, if tracefs is readable.
pub(super) fn tracepoint_id(category: &str, name: &str) -> Option<u64> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|root| fs::read_to_string(format!("{root}/events/{category}/{name}/id")).ok())
        .and_then(|s| s.trim().parse().ok())
}

/// What the machine is, for the record.
#[derive(Debug, Clone)]
pub(super) struct MachineInfo {
    pub(super) cpu_model: String,
    pub(super) vcpus: usize,
    pub(super) mem_gib: f64,
    pub(super) kernel: String,
    pub(super) hypervisor: bool,
    pub(super) loadavg_at_start: String,
}

impl MachineInfo {
    pub(super) fn read() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, m)| m.trim().to_string());
        let hypervisor = cpuinfo
            .lines()
            .any(|l| l.starts_with("flags") && l.contains(" hypervisor"));
        let mem_kib = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default().trim().to_string();
        Self {
            cpu_model,
            // Not `available_parallelism`: that follows this thread's pinning.
            vcpus: cpuinfo
                .lines()
                .filter(|l| l.starts_with("processor"))
                .count(),
            mem_gib: mem_kib as f64 / (1024.0 * 1024.0),
            kernel: read("/proc/sys/kernel/osrelease"),
            hypervisor,
            loadavg_at_start: read("/proc/loadavg"),
        }
    }

    pub(super) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "cpu_model": self.cpu_model,
            "vcpus": self.vcpus,
            "mem_gib": self.mem_gib,
            "kernel": self.kernel,
            "hypervisor": self.hypervisor,
            "loadavg_at_start": self.loadavg_at_start,
        })
    }
}
