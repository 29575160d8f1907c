//! Figures out of runs: spreads, per-round ratios and the judgement of noise, the tables, and
//! the summary for the JSON file.

use std::time::SystemTime;

use serde_json::{Value, json};

use super::cli::Args;
use super::trial::{Shape, Trial, Variant};
use super::uring_fwd;

pub(super) fn print_trial(t: &Trial) {
    let mut extra = String::new();
    if let Some(e) = t.turns {
        extra += &format!(", {:.4} turns/frame", e as f64 / t.frames.max(1.0));
    }
    if let Some(s) = t.syscalls {
        let f = t.frames.max(1.0);
        extra += &format!(
            ", syscalls/frame {:.4} (io_uring_enter {:.4}, epoll_wait {:.4})",
            s.total as f64 / f,
            s.enter as f64 / f,
            s.epoll as f64 / f
        );
    }
    let redone = if t.redone > 0 {
        format!(", redone {}×", t.redone)
    } else {
        String::new()
    };
    let flag = if t.disturbed() { " DISTURBED" } else { "" };
    println!(
        "  r{} {:<16} {:<17} {:>6.3} M frames/s {:>6.2} Gbit/s  fwd {:.2} vCPU  {:>6.3} M \
         frames/CPU-s  csw {}+{}  other {:.0} %{extra}{redone}{flag}",
        t.round,
        t.shape.label(),
        t.variant.label(),
        t.fps() / 1e6,
        t.gbps(),
        t.util(),
        t.per_cpu_s() / 1e6,
        t.vcsw,
        t.ivcsw,
        t.other_vcpu * 100.0,
    );
}

/// Minimum, median and maximum.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], med, v[n - 1])
}

fn runs_of(trials: &[Trial], shape: Shape, v: Variant) -> Vec<&Trial> {
    trials
        .iter()
        .filter(|t| t.shape == shape && t.variant == v)
        .collect()
}

/// Per-round ratios of `v` over `base`, for `f`.
fn paired(
    trials: &[Trial],
    shape: Shape,
    v: Variant,
    base: Variant,
    f: fn(&Trial) -> f64,
) -> Vec<f64> {
    let base = runs_of(trials, shape, base);
    runs_of(trials, shape, v)
        .iter()
        .filter_map(|t| {
            let b = base.iter().find(|b| b.round == t.round)?;
            Some(f(t) / f(b))
        })
        .collect()
}

/// "Outside the noise" only when every round's ratio is on the same side of 1.
fn judge(ratios: &[f64]) -> String {
    let (lo, med, hi) = spread(ratios);
    let pct = |r: f64| format!("{:+.1} %", (r - 1.0) * 100.0);
    if ratios.is_empty() {
        "no paired rounds".into()
    } else if ratios.len() == 1 {
        format!("{} (one round: no spread to judge by)", pct(med))
    } else if lo > 1.0 {
        format!(
            "{} (higher in every round: {}..{})",
            pct(med),
            pct(lo),
            pct(hi)
        )
    } else if hi < 1.0 {
        format!(
            "{} (lower in every round: {}..{})",
            pct(med),
            pct(lo),
            pct(hi)
        )
    } else {
        format!(
            "{} inside the noise (rounds {}..{})",
            pct(med),
            pct(lo),
            pct(hi)
        )
    }
}

pub(super) fn summarize(args: &Args, shapes: &[Shape], trials: &[Trial]) -> Value {
    let mut out = Vec::new();
    for &shape in shapes {
        for &v in &args.variants {
            let runs = runs_of(trials, shape, v);
            if runs.is_empty() {
                continue;
            }
            let s = |f: fn(&Trial) -> f64| {
                let (lo, med, hi) = spread(&runs.iter().map(|t| f(t)).collect::<Vec<_>>());
                json!({"min": lo, "median": med, "max": hi})
            };
            let mut o = json!({
                "frame_bytes": shape.size,
                "connections": shape.conns,
                "variant": v.key(),
                "rounds": runs.len(),
                "frames_per_s": s(Trial::fps),
                "gbit_per_s": s(Trial::gbps),
                "forwarder_vcpu": s(Trial::util),
                "frames_per_cpu_s": s(Trial::per_cpu_s),
                "other_work_vcpu": s(|t| t.other_vcpu),
            });
            if matches!(v, Variant::Uring | Variant::EpollLoop) {
                o["loop_turns_per_frame"] = s(|t| t.turns.unwrap_or(0) as f64 / t.frames.max(1.0));
            }
            o["user_ns_per_frame"] = s(|t| t.user_s * 1e9 / t.frames.max(1.0));
            o["system_ns_per_frame"] = s(|t| t.sys_s * 1e9 / t.frames.max(1.0));
            let r = |base: Variant, f: fn(&Trial) -> f64| {
                let p = paired(trials, shape, v, base, f);
                let (lo, med, hi) = spread(&p);
                json!({"per_round": p, "min": lo, "median": med, "max": hi,
                       "verdict": judge(&p)})
            };
            if v != Variant::Epoll && args.variants.contains(&Variant::Epoll) {
                o["vs_epoll_frames_per_s"] = r(Variant::Epoll, Trial::fps);
                o["vs_epoll_frames_per_cpu_s"] = r(Variant::Epoll, Trial::per_cpu_s);
            }
            if v == Variant::Uring && args.variants.contains(&Variant::EpollLoop) {
                o["vs_epoll_loop_frames_per_s"] = r(Variant::EpollLoop, Trial::fps);
                o["vs_epoll_loop_frames_per_cpu_s"] = r(Variant::EpollLoop, Trial::per_cpu_s);
            }
            out.push(o);
        }
    }
    Value::Array(out)
}

pub(super) fn print_summary(
    args: &Args,
    shapes: &[Shape],
    trials: &[Trial],
    counted: &[Trial],
    syscall_note: Option<&str>,
) {
    let m = |x: f64| x / 1e6;
    println!(
        "\n| frames | variant | frames/s, M: median (min–max) | Gbit/s | forwarder vCPU | \
         frames per CPU-s, M: median (min–max) | CPU ns/frame: user + system | waits/frame |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &shape in shapes {
        for &v in &args.variants {
            let runs = runs_of(trials, shape, v);
            if runs.is_empty() {
                continue;
            }
            let col = |f: fn(&Trial) -> f64| spread(&runs.iter().map(|t| f(t)).collect::<Vec<_>>());
            let (fl, fm, fh) = col(Trial::fps);
            let (_, g, _) = col(Trial::gbps);
            let (ul, um, uh) = col(Trial::util);
            let (cl, cm, ch) = col(Trial::per_cpu_s);
            let (_, user, _) = col(|t| t.user_s * 1e9 / t.frames.max(1.0));
            let (_, system, _) = col(|t| t.sys_s * 1e9 / t.frames.max(1.0));
            let enter = if matches!(v, Variant::Uring | Variant::EpollLoop) {
                let (_, e, _) = col(|t| t.turns.unwrap_or(0) as f64 / t.frames.max(1.0));
                format!("{e:.4}")
            } else {
                "–".into()
            };
            println!(
                "| {} | {} | {:.2} ({:.2}–{:.2}) | {g:.2} | {um:.2} ({ul:.2}–{uh:.2}) | \
                 {:.2} ({:.2}–{:.2}) | {user:.0} + {system:.0} | {enter} |",
                shape.label(),
                v.label(),
                m(fm),
                m(fl),
                m(fh),
                m(cm),
                m(cl),
                m(ch)
            );
        }
    }
    let others: Vec<Variant> = args
        .variants
        .iter()
        .copied()
        .filter(|&v| v != Variant::Epoll)
        .collect();
    let mut pairs: Vec<(Variant, Variant)> = Vec::new();
    if args.variants.contains(&Variant::Epoll) {
        pairs.extend(others.iter().map(|&v| (v, Variant::Epoll)));
    }
    if args.variants.contains(&Variant::Uring) && args.variants.contains(&Variant::EpollLoop) {
        // What io_uring itself buys: the same loop, completions against readiness.
        pairs.push((Variant::Uring, Variant::EpollLoop));
    }
    if !pairs.is_empty() {
        println!(
            "\nRatios per round (runs side by side in the same round); \"outside the noise\" \
             only when every round agrees:"
        );
        println!("\n| frames | variant | against | frames/s | frames per CPU-s |");
        println!("|---|---|---|---|---|");
        for &shape in shapes {
            for &(v, base) in &pairs {
                println!(
                    "| {} | {} | {} | {} | {} |",
                    shape.label(),
                    v.label(),
                    base.label(),
                    judge(&paired(trials, shape, v, base, Trial::fps)),
                    judge(&paired(trials, shape, v, base, Trial::per_cpu_s))
                );
            }
        }
    }
    println!("\nHand-written loops, whole runs (warm-up and drain included), median over rounds:");
    for v in [Variant::Uring, Variant::EpollLoop] {
        let loops: Vec<&Trial> = trials.iter().filter(|t| t.variant == v).collect();
        let Some(first) = loops.first() else {
            continue;
        };
        println!("{} ({}):", v.label(), first.setup);
        for &shape in shapes {
            let r: Vec<(&uring_fwd::Report, u64)> = loops
                .iter()
                .filter(|t| t.shape == shape)
                .filter_map(|t| Some((t.detail.as_ref()?, t.frames_total)))
                .collect();
            if r.is_empty() {
                continue;
            }
            let med = |f: &dyn Fn(&uring_fwd::Report, f64) -> f64| {
                spread(&r.iter().map(|(d, n)| f(d, *n as f64)).collect::<Vec<_>>()).1
            };
            let per_turn = |x: u64, d: &uring_fwd::Report| x as f64 / d.turns.max(1) as f64;
            let common = format!(
                "  {}: {:.1} events and {:.1} receives per turn, {:.0} iovecs per send, \
                 {:.1} % of sends partial, {:.0} frames per turn, {:.0} straddling headers",
                shape.label(),
                med(&|d, _| per_turn(d.events, d)),
                med(&|d, _| per_turn(d.recvs, d)),
                med(&|d, _| d.iovecs as f64 / d.sends.max(1) as f64),
                med(&|d, _| d.partial_sends as f64 * 100.0 / d.sends.max(1) as f64),
                med(&|d, n| n / d.turns.max(1) as f64),
                med(&|d, _| d.split_headers as f64),
            );
            let own = match v {
                Variant::Uring => format!(
                    "; {:.0} -ENOBUFS, {:.0} re-arms, {:.0} CQEs with F_MORE",
                    med(&|d, _| d.starved as f64),
                    med(&|d, _| d.rearms as f64),
                    med(&|d, _| d.multishot_more as f64),
                ),
                _ => format!(
                    "; {:.0} reads found the pool empty, {:.0} EAGAIN reads; system calls \
                     per frame (own count: waits, reads, writes) {:.4}",
                    med(&|d, _| d.starved as f64),
                    med(&|d, _| d.eagain as f64),
                    med(&|d, n| (d.turns + d.recvs + d.eagain + d.sends) as f64 / n),
                ),
            };
            println!("{common}{own}");
        }
    }
    match syscall_note {
        Some(n) => println!("\nsystem calls: {n}"),
        None if !counted.is_empty() => {
            println!(
                "\nSystem calls of the forwarding thread (separate runs, perf tracepoints; \
                 counting slows each call, so these runs' rates are not comparable):"
            );
            println!(
                "\n| frames | variant | syscalls/frame | io_uring_enter/frame | \
                 epoll_wait/frame | frames/s, M (counted run) |"
            );
            println!("|---|---|---|---|---|---|");
            for t in counted {
                let f = t.frames.max(1.0);
                let s = t.syscalls.unwrap_or_default();
                println!(
                    "| {} | {} | {:.4} | {:.4} | {:.4} | {:.2} |",
                    t.shape.label(),
                    t.variant.label(),
                    s.total as f64 / f,
                    s.enter as f64 / f,
                    s.epoll as f64 / f,
                    t.fps() / 1e6
                );
            }
        }
        None => {}
    }
    let disturbed = trials.iter().filter(|t| t.disturbed()).count();
    let redone: usize = trials.iter().map(|t| t.redone).sum();
    let (_, other, other_hi) = spread(&trials.iter().map(|t| t.other_vcpu).collect::<Vec<_>>());
    let (_, steal, _) = spread(&trials.iter().map(|t| t.steal_vcpu).collect::<Vec<_>>());
    println!(
        "\nother work during runs: median {:.0} %, max {:.0} % of a vCPU; steal median {:.1} \
         %; {redone} run(s) redone, {disturbed} kept disturbed",
        other * 100.0,
        other_hi * 100.0,
        steal * 100.0
    );
}

/// Now, as `YYYY-MM-DD HH:MM:SS` UTC.
pub(super) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The checkout's commit, if this runs inside one.
pub(super) fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
