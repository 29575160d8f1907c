//! Results: one run's figures, printed and as JSON; the summary over rounds; and the
//! comparisons the issue sets goals for (mix over single, hyphae over stock).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Case, Impl, LinkKind, Traffic};

/// One run of one case on one router.
#[derive(Debug, Clone)]
pub(super) struct RunResult {
    pub(super) imp: Impl,
    pub(super) case: Case,
    pub(super) round: usize,
    /// Seconds measured (the window the rates are over).
    pub(super) seconds: f64,
    /// Seconds the probes before the run took to reach every destination.
    pub(super) ready_s: f64,
    pub(super) loadavg: f64,
    pub(super) sent: u64,
    pub(super) sent_on_stream: u64,
    pub(super) delivered: u64,
    pub(super) delivered_on_stream: u64,
    pub(super) dropped: u64,
    pub(super) frames_per_s: f64,
    pub(super) gbit_per_s: f64,
    pub(super) router_cpu_s: f64,
    pub(super) bench_cpu_s: f64,
    pub(super) steal_s: f64,
    pub(super) sink_resets: u64,
    pub(super) sender_resets: u64,
    pub(super) reset_reasons: Vec<String>,
    pub(super) sink_quic_datagrams: Option<u64>,
    pub(super) stock_too_large: u64,
    pub(super) udp_rcvbuf_errors: u64,
    pub(super) router_counters: BTreeMap<String, f64>,
    pub(super) generator_relinks: u64,
    pub(super) generator_error: Option<String>,
    pub(super) still_arriving: bool,
    pub(super) error: Option<String>,
}

impl RunResult {
    pub(super) fn new(imp: Impl, case: Case, round: usize) -> Self {
        Self {
            imp,
            case,
            round,
            seconds: 0.0,
            ready_s: 0.0,
            loadavg: 0.0,
            sent: 0,
            sent_on_stream: 0,
            delivered: 0,
            delivered_on_stream: 0,
            dropped: 0,
            frames_per_s: 0.0,
            gbit_per_s: 0.0,
            router_cpu_s: 0.0,
            bench_cpu_s: 0.0,
            steal_s: 0.0,
            sink_resets: 0,
            sender_resets: 0,
            reset_reasons: Vec::new(),
            sink_quic_datagrams: None,
            stock_too_large: 0,
            udp_rcvbuf_errors: 0,
            router_counters: BTreeMap::new(),
            generator_relinks: 0,
            generator_error: None,
            still_arriving: false,
            error: None,
        }
    }

    fn drop_pct(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.dropped as f64 * 100.0 / self.sent as f64
    }

    fn frames_per_cpu_s(&self) -> f64 {
        if self.router_cpu_s <= 0.0 {
            return 0.0;
        }
        self.frames_per_s * self.seconds / self.router_cpu_s
    }

    /// Datagrams the sink's own QUIC stack received but the sink never read (its buffer was
    /// full): drops to charge to the benchmark, not the router.
    fn sink_dropped(&self) -> u64 {
        self.sink_quic_datagrams.map_or(0, |d| {
            d.saturating_sub(self.delivered - self.delivered_on_stream)
        })
    }

    fn resets(&self) -> u64 {
        self.sink_resets + self.sender_resets
    }

    pub(super) fn print(&self) {
        let head = format!(
            "[round {}] {} {:<6}",
            self.round + 1,
            self.case.label(),
            self.imp.name()
        );
        if let Some(e) = &self.error {
            println!("{head}: FAILED: {e}");
            return;
        }
        let mut extra = String::new();
        if self.resets() > 0 {
            extra += &format!(
                "; {} link reset(s) (sink {}, sender {}), {} frames delivered meanwhile",
                self.resets(),
                self.sink_resets,
                self.sender_resets,
                self.delivered
            );
        }
        if self.stock_too_large > 0 {
            extra += &format!(
                "; stock logged 'datagram too large' {} times",
                self.stock_too_large
            );
        }
        if self.delivered_on_stream > 0 || self.sent_on_stream > 0 {
            extra += &format!(
                "; on the QUIC stream: sent {}, delivered {}",
                self.sent_on_stream, self.delivered_on_stream
            );
        }
        for k in [
            "drop_queue_full",
            "drop_no_route",
            "quic_oversize_on_stream",
        ] {
            if let Some(v) = self.router_counters.get(k) {
                extra += &format!("; router {k} {v:.0}");
            }
        }
        if self.udp_rcvbuf_errors > 0 {
            extra += &format!(
                "; UDP receive buffers overflowed {} times (machine-wide)",
                self.udp_rcvbuf_errors
            );
        }
        if self.sink_dropped() > 0 {
            extra += &format!("; the sink itself dropped {}", self.sink_dropped());
        }
        if let Some(e) = &self.generator_error {
            extra += &format!("; generator: {e}");
        }
        if self.still_arriving {
            extra += "; frames still arriving at the end of the drain";
        }
        println!(
            "{head}: {:>6.3} M frames/s {:>6.2} Gbit/s, drop {:.2} % (sent {}, delivered {}), \
             router {:.2} CPU-s ({:.2} M frames/CPU-s), bench {:.2} CPU-s{extra}",
            self.frames_per_s / 1e6,
            self.gbit_per_s,
            self.drop_pct(),
            self.sent,
            self.delivered,
            self.router_cpu_s,
            self.frames_per_cpu_s() / 1e6,
            self.bench_cpu_s,
        );
    }

    pub(super) fn json(&self) -> Value {
        json!({
            "impl": self.imp.name(), "link": self.case.link.name(),
            "traffic": self.case.traffic.name(), "frame_len": self.case.frame_len,
            "round": self.round + 1, "seconds": self.seconds, "ready_s": self.ready_s,
            "loadavg": self.loadavg, "steal_s": self.steal_s,
            "sent": self.sent, "sent_on_stream": self.sent_on_stream,
            "delivered": self.delivered, "delivered_on_stream": self.delivered_on_stream,
            "dropped": self.dropped, "drop_pct": self.drop_pct(),
            "frames_per_s": self.frames_per_s, "gbit_per_s": self.gbit_per_s,
            "router_cpu_s": self.router_cpu_s, "frames_per_cpu_s": self.frames_per_cpu_s(),
            "bench_cpu_s": self.bench_cpu_s,
            "link_resets": self.resets(), "sink_resets": self.sink_resets,
            "sender_resets": self.sender_resets, "reset_reasons": self.reset_reasons,
            "stock_datagram_too_large_logged": self.stock_too_large,
            "sink_quic_datagram_frames": self.sink_quic_datagrams,
            "sink_dropped": self.sink_dropped(),
            "udp_rcvbuf_errors_machine_wide": self.udp_rcvbuf_errors,
            "router_counters": self.router_counters,
            "generator_relinks": self.generator_relinks,
            "generator_error": self.generator_error,
            "still_arriving_after_drain": self.still_arriving,
            "error": self.error,
        })
    }
}

/// min, median and max of some values (NaN when empty).
#[derive(Debug, Clone, Copy)]
struct Spread {
    min: f64,
    median: f64,
    max: f64,
}

impl Spread {
    fn of(v: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = v.into_iter().collect();
        v.sort_by(f64::total_cmp);
        let median = match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Self {
            min: v.first().copied().unwrap_or(f64::NAN),
            median,
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    pub(super) fn json(&self) -> Value {
        json!({"min": self.min, "median": self.median, "max": self.max})
    }
}

/// One case on one router, over its rounds.
pub(super) struct Summary {
    case: Case,
    imp: Impl,
    rounds: usize,
    failed: usize,
    fps: Spread,
    gbps: Spread,
    drop_pct: Spread,
    cpu_s: Spread,
    fpcpu: Spread,
    /// vCPUs the benchmark process (generator and sink) kept busy.
    bench_vcpus: Spread,
    resets: u64,
}

impl Summary {
    pub(super) fn json(&self) -> Value {
        json!({
            "impl": self.imp.name(), "link": self.case.link.name(),
            "traffic": self.case.traffic.name(), "frame_len": self.case.frame_len,
            "rounds": self.rounds, "failed_rounds": self.failed,
            "frames_per_s": self.fps.json(), "gbit_per_s": self.gbps.json(),
            "drop_pct": self.drop_pct.json(), "router_cpu_s": self.cpu_s.json(),
            "frames_per_cpu_s": self.fpcpu.json(), "link_resets": self.resets,
            "bench_vcpus": self.bench_vcpus.json(),
        })
    }
}

pub(super) fn summarize(runs: &[RunResult]) -> Vec<Summary> {
    let mut groups: BTreeMap<(Case, Impl), Vec<&RunResult>> = BTreeMap::new();
    for r in runs {
        groups.entry((r.case, r.imp)).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|((case, imp), rs)| {
            let ok: Vec<&RunResult> = rs.iter().copied().filter(|r| r.error.is_none()).collect();
            let spread = |f: fn(&RunResult) -> f64| Spread::of(ok.iter().map(|r| f(r)));
            Summary {
                case,
                imp,
                rounds: ok.len(),
                failed: rs.len() - ok.len(),
                fps: spread(|r| r.frames_per_s),
                gbps: spread(|r| r.gbit_per_s),
                drop_pct: spread(RunResult::drop_pct),
                cpu_s: spread(|r| r.router_cpu_s),
                fpcpu: spread(RunResult::frames_per_cpu_s),
                bench_vcpus: spread(|r| r.bench_cpu_s / r.seconds.max(1e-9)),
                resets: ok.iter().map(|r| r.resets()).sum(),
            }
        })
        .collect()
}

pub(super) fn print_summary(summary: &[Summary]) {
    println!("\nsummary: median [min..max] over rounds");
    for s in summary {
        let failed = if s.failed > 0 {
            format!(", {} round(s) failed", s.failed)
        } else {
            String::new()
        };
        let resets = if s.resets > 0 {
            format!(", {} link resets", s.resets)
        } else {
            String::new()
        };
        println!(
            "{} {:<6}: {:.3} [{:.3}..{:.3}] M frames/s, {:.2} [{:.2}..{:.2}] Gbit/s, drop {:.2} \
             [{:.2}..{:.2}] %, router {:.2} CPU-s, {:.2} M frames/CPU-s ({} rounds{failed}{resets})",
            s.case.label(),
            s.imp.name(),
            s.fps.median / 1e6,
            s.fps.min / 1e6,
            s.fps.max / 1e6,
            s.gbps.median,
            s.gbps.min,
            s.gbps.max,
            s.drop_pct.median,
            s.drop_pct.min,
            s.drop_pct.max,
            s.cpu_s.median,
            s.fpcpu.median / 1e6,
            s.rounds,
        );
    }
}

/// Mix over single for each router, link and size (goal: at least 0.8), and hyphae over stock
/// for each case (goal over QUIC: at least 3); printed, and returned for the JSON.
pub(super) fn compare(summary: &[Summary], cores: usize) -> Value {
    let find = |case: Case, imp: Impl| {
        summary
            .iter()
            .find(|s| s.case == case && s.imp == imp && s.rounds > 0)
    };
    let mut mix = Vec::new();
    let mut vs = Vec::new();
    println!();
    for s in summary.iter().filter(|s| s.case.traffic == Traffic::Mix) {
        let single = Case {
            traffic: Traffic::Single,
            ..s.case
        };
        let Some(base) = find(single, s.imp) else {
            continue;
        };
        if s.rounds == 0 || base.fps.median <= 0.0 {
            continue;
        }
        let ratio = s.fps.median / base.fps.median;
        println!(
            "mix / single, {} {} {} B: {:.2} of the single-flow rate (goal >= 0.80: {})",
            s.imp.name(),
            s.case.link.name(),
            s.case.frame_len,
            ratio,
            if ratio >= 0.8 { "met" } else { "not met" }
        );
        mix.push(json!({
            "impl": s.imp.name(), "link": s.case.link.name(), "frame_len": s.case.frame_len,
            "ratio": ratio, "goal": 0.8, "met": ratio >= 0.8,
        }));
    }
    for s in summary.iter().filter(|s| s.imp == Impl::Hyphae) {
        let Some(stock) = find(s.case, Impl::Stock) else {
            continue;
        };
        if s.rounds == 0 {
            continue;
        }
        if stock.fps.median <= 0.0 {
            println!(
                "hyphae / stock, {}: stock delivered nothing (its links reset {} times); \
                 hyphae {:.3} M frames/s",
                s.case.label(),
                stock.resets,
                s.fps.median / 1e6
            );
            vs.push(json!({
                "link": s.case.link.name(), "traffic": s.case.traffic.name(),
                "frame_len": s.case.frame_len, "ratio": null, "stock_delivered": 0,
                "stock_link_resets": stock.resets,
            }));
            continue;
        }
        let ratio = s.fps.median / stock.fps.median;
        let goal = (s.case.link == LinkKind::Quic).then_some(3.0);
        let verdict = match goal {
            Some(g) if ratio >= g => " (goal >= 3x: met)",
            Some(_) => " (goal >= 3x: not met)",
            None => "",
        };
        println!(
            "hyphae / stock, {}: {:.2}x delivered frames/s{verdict}{}",
            s.case.label(),
            ratio,
            if stock.resets > 0 {
                format!("; stock's links reset {} times", stock.resets)
            } else {
                String::new()
            }
        );
        vs.push(json!({
            "link": s.case.link.name(), "traffic": s.case.traffic.name(),
            "frame_len": s.case.frame_len, "ratio": ratio, "goal": goal,
            "met": goal.map(|g| ratio >= g), "stock_link_resets": stock.resets,
        }));
    }
    // The floor: what the generator and the sink move with no hop at all, and what they spend
    // per frame doing it. A hop opens and seals every frame once more (QUIC: decrypts and
    // encrypts each datagram, as the two endpoints do between them), so with one it costs
    // about twice the floor's CPU per frame, and the machine's vCPUs cap the rate at `ceiling`.
    let mut floors = Vec::new();
    for s in summary
        .iter()
        .filter(|s| s.imp == Impl::Direct && s.rounds > 0)
    {
        let of = |imp: Impl| find(s.case, imp).map(|o| o.fps.median / s.fps.median);
        let stock = find(s.case, Impl::Stock)
            .map(|o| o.fps.median)
            .filter(|&v| v > 0.0);
        let cpu_per_frame = s.bench_vcpus.median / s.fps.median;
        let ceiling = (cpu_per_frame > 0.0).then(|| cores as f64 / (2.0 * cpu_per_frame));
        println!(
            "floor (no router), {}: {:.3} M frames/s, the generator and sink on {:.2} vCPUs \
             ({:.2} us per frame); hyphae reaches {} of it, stock {}",
            s.case.label(),
            s.fps.median / 1e6,
            s.bench_vcpus.median,
            cpu_per_frame * 1e6,
            of(Impl::Hyphae).map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
            of(Impl::Stock).map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
        );
        if let (Some(stock), Some(ceiling)) = (stock, ceiling)
            && s.case.link == LinkKind::Quic
        {
            println!(
                "  with one hop doing the endpoints' work again: at most {:.3} M frames/s on {cores} \
                 vCPUs, {:.2}x stock (the goal, 3x, {})",
                ceiling / 1e6,
                ceiling / stock,
                if ceiling >= 3.0 * stock {
                    "fits under it"
                } else {
                    "is above it"
                }
            );
        }
        floors.push(json!({
            "link": s.case.link.name(), "traffic": s.case.traffic.name(),
            "frame_len": s.case.frame_len, "frames_per_s": s.fps.median,
            "bench_vcpus": s.bench_vcpus.median, "cpu_s_per_frame": cpu_per_frame,
            "one_hop_ceiling_frames_per_s": ceiling,
            "hyphae_of_floor": of(Impl::Hyphae), "stock_of_floor": of(Impl::Stock),
            "floor_over_stock": stock.map(|v| s.fps.median / v),
        }));
    }
    json!({"mix_over_single": mix, "hyphae_over_stock": vs, "floor": floors})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_rounds() {
        let s = Spread::of([3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 2.5, 10.0));
        assert!(Spread::of([]).median.is_nan());
    }
}
