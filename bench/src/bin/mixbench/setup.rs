//! One router under test (hyphae or stock mycelium, a child process) with its two fake
//! peers, or the two peers linked straight to each other (the floor): starting it, probing
//! until every destination is reachable, and one measured run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hyphae_bench::fake_peer::{self, Peer, Prefixes, STALL};
use hyphae_bench::free_port;
use hyphae_bench::sys::{self, Proc};
use serde_json::{Value, json};

use super::report::RunResult;
use super::{Args, Bins, Case, Dialer, Impl, LinkKind, Traffic, TrafficSets};

/// One router under test with its two fake peers (no router: the direct floor).
pub(super) struct Setup {
    imp: Impl,
    link: LinkKind,
    router: Option<Proc>,
    sender: Peer,
    sink: Peer,
    /// hyphae's Prometheus endpoint.
    metrics: Option<SocketAddr>,
    /// The workers the sender's and the sink's first links landed on (hyphae).
    workers: [Option<usize>; 2],
    /// Seconds from start until every destination was reachable.
    routes_s: f64,
}

impl Setup {
    pub(super) fn start(
        imp: Impl,
        link: LinkKind,
        args: &Args,
        bins: &Bins,
        sets: &TrafficSets,
        dir: &Path,
    ) -> Result<Self> {
        let (sender, sink) = (&sets.sender, &sets.sink);
        let t0 = Instant::now();
        if imp == Impl::Direct {
            return Self::direct(link, sets, t0);
        }
        let dir = dir.join(format!("{}-{}", link.name(), imp.name()));
        std::fs::create_dir_all(&dir)?;
        let (mut peers, mut endpoints) = (Vec::new(), Vec::new());
        if args.dial == Dialer::Router {
            for p in [sender, sink] {
                let peer = listen(link, p)?;
                let port = peer.listen_port.context("a listening peer has a port")?;
                endpoints.push(format!("{}://127.0.0.1:{port}", link.name()));
                peers.push(peer);
            }
        }
        let (port, api) = (free_port()?, free_port()?);
        let key = dir.join("key.bin");
        let mut cmd;
        let mut metrics = None;
        match imp {
            Impl::Hyphae => {
                std::fs::write(&key, [0x77u8; 32])?;
                let m = SocketAddr::from(([127, 0, 0, 1], free_port()?));
                metrics = Some(m);
                cmd = Command::new(bins.hyphae.as_ref().context("no hyphae binary")?);
                cmd.arg("-k")
                    .arg(&key)
                    .args(["-t", &port.to_string()])
                    .args(["--api-addr", &format!("127.0.0.1:{api}")])
                    .args(["--metrics-api-address", &m.to_string()])
                    .args(["--disable-peer-discovery", "--no-tun"])
                    .args(["--driver", &args.driver])
                    .args(["--workers", &args.workers.to_string()])
                    .arg("--local-socket")
                    .arg(dir.join("router.sock"))
                    .env("RUST_LOG", "info");
                match link {
                    LinkKind::Tcp => cmd.arg("--disable-quic"),
                    LinkKind::Quic => cmd.args(["-q", &port.to_string()]),
                };
                if !endpoints.is_empty() {
                    cmd.arg("--peers").args(&endpoints);
                }
            }
            Impl::Stock => {
                std::fs::write(&key, [0x78u8; 32])?;
                let cfg = dir.join("mycelium.toml");
                let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
                std::fs::write(&cfg, format!("peers = [{}]\n", list.join(", ")))?;
                cmd = Command::new(bins.stock.as_ref().context("no stock binary")?);
                cmd.current_dir(&dir)
                    .arg("-k")
                    .arg(&key)
                    .arg("-c")
                    .arg(&cfg)
                    .args(["--no-tun", "--disable-peer-discovery"])
                    .args(["-t", &port.to_string(), "-q", &port.to_string()])
                    .args(["--api-addr", &format!("127.0.0.1:{api}")])
                    .args(["--jsonrpc-addr", &format!("127.0.0.1:{}", free_port()?)]);
                if link == LinkKind::Tcp {
                    cmd.arg("--disable-quic");
                }
            }
            Impl::Direct => unreachable!("returned above"),
        }
        let label = format!("{} router ({})", imp.name(), link.name());
        let mut router = Proc::spawn(&label, &mut cmd, dir.join("router.log"))?;
        let api = SocketAddr::from(([127, 0, 0, 1], api));
        wait_for(&label, Duration::from_secs(15), &mut router, || {
            sys::http_get(api, "/api/v1/admin", Duration::from_secs(1))
                .ok()
                .map(|_| ())
        })?;
        if args.dial == Dialer::Peers {
            let to = SocketAddr::from(([127, 0, 0, 1], port));
            for p in [sender, sink] {
                peers.push(dial(link, p, to)?);
            }
        }
        let (Some(sink_peer), Some(sender_peer)) = (peers.pop(), peers.pop()) else {
            bail!("two fake peers expected");
        };
        wait_for(
            "both links up",
            Duration::from_secs(20),
            &mut router,
            || {
                let up = |p: &Peer| p.counters.links_up.load(Relaxed) > 0;
                (up(&sender_peer) && up(&sink_peer)).then_some(())
            },
        )?;
        let mut s = Self {
            imp,
            link,
            router: Some(router),
            sender: sender_peer,
            sink: sink_peer,
            metrics,
            workers: [None, None],
            routes_s: 0.0,
        };
        if imp == Impl::Hyphae {
            // Both "peer up" lines are written as the links come up; give the log a moment.
            let deadline = Instant::now() + Duration::from_secs(5);
            while s.workers.contains(&None) && Instant::now() < deadline {
                s.workers = s.read_workers();
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let all: Vec<u32> = (0..sink.len() as u32).collect();
        s.ready(&all, Duration::from_secs(60), sets)
            .context("learning the sink's routes")?;
        s.routes_s = t0.elapsed().as_secs_f64();
        Ok(s)
    }

    /// The sender dials the sink, which listens; no router.
    fn direct(link: LinkKind, sets: &TrafficSets, t0: Instant) -> Result<Self> {
        let sink = listen(link, &sets.sink)?;
        let port = sink.listen_port.context("a listening peer has a port")?;
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        let sender = dial(link, &sets.sender, to)?;
        let up = |p: &Peer| p.counters.links_up.load(Relaxed) > 0;
        let linked = sys::poll_until(
            Duration::from_secs(20),
            Duration::from_millis(50),
            || Ok(()),
            || (up(&sender) && up(&sink)).then_some(()),
        )?;
        if linked.is_none() {
            bail!("direct link: not up within 20 s");
        }
        let mut s = Self {
            imp: Impl::Direct,
            link,
            router: None,
            sender,
            sink,
            metrics: None,
            workers: [None, None],
            routes_s: 0.0,
        };
        let all: Vec<u32> = (0..sets.sink.len() as u32).collect();
        s.ready(&all, Duration::from_secs(60), sets)
            .context("probing the sink straight")?;
        s.routes_s = t0.elapsed().as_secs_f64();
        Ok(s)
    }

    /// The workers of the sender's and the sink's links, from hyphae's `peer up` log lines
    /// (`endpoint=<our end> ... worker=N`).
    fn read_workers(&self) -> [Option<usize>; 2] {
        let Some(router) = &self.router else {
            return [None, None];
        };
        let log = std::fs::read_to_string(router.log()).unwrap_or_default();
        let mut found = [None, None];
        for line in log.lines().filter(|l| l.contains("peer up")) {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(str::to_owned)
            };
            let port = field("endpoint=")
                .and_then(|e| e.rsplit(':').next()?.parse::<u16>().ok())
                .unwrap_or(0);
            let worker = field("worker=").and_then(|w| w.parse::<usize>().ok());
            for (i, p) in [&self.sender, &self.sink].into_iter().enumerate() {
                if found[i].is_none() && p.counters.ports().contains(&port) {
                    found[i] = worker;
                }
            }
        }
        found
    }

    pub(super) fn print(&self) {
        let w = |w: Option<usize>| w.map_or_else(|| "?".to_owned(), |w| w.to_string());
        let workers = match self.imp {
            Impl::Hyphae => format!(
                "; sender link on worker {}, sink link on worker {}{}",
                w(self.workers[0]),
                w(self.workers[1]),
                match self.workers {
                    [Some(a), Some(b)] if a == b => " (the same worker)",
                    [Some(_), Some(_)] => " (different workers)",
                    _ => "",
                }
            ),
            Impl::Stock | Impl::Direct => String::new(),
        };
        println!(
            "{} over {}: up, {} routes reachable after {:.2} s{workers}",
            self.imp.name(),
            self.link.name(),
            self.sink.counters.probes_seen.load(Relaxed),
            self.routes_s
        );
    }

    pub(super) fn json(&self) -> Value {
        json!({
            "impl": self.imp.name(), "link": self.link.name(),
            "sender_worker": self.workers[0], "sink_worker": self.workers[1],
            "routes_reachable_after_s": self.routes_s,
        })
    }

    /// Sends probes until each of the sink's destinations `ids` has received one, for at most
    /// `limit`. Returns the seconds it took.
    fn ready(&mut self, ids: &[u32], limit: Duration, sets: &TrafficSets) -> Result<f64> {
        let t0 = Instant::now();
        let c = self.sink.counters.clone();
        c.reset_probes();
        loop {
            let missing: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|&i| !c.probe_seen(i as usize))
                .collect();
            if missing.is_empty() {
                return Ok(t0.elapsed().as_secs_f64());
            }
            if let Some(r) = &mut self.router {
                r.check()?;
            }
            if t0.elapsed() > limit {
                bail!(
                    "{} of {} destinations still unreachable after {limit:?}",
                    missing.len(),
                    ids.len()
                );
            }
            let r = self
                .sender
                .generator
                .send_once(sets.probes(&missing)?, STALL * 2)?;
            if let Some(e) = r.error {
                // The link may be coming back (the reference redials after a reset): retry
                // until the limit.
                println!("  (probing: {e})");
            }
            let wait = Instant::now();
            while wait.elapsed() < Duration::from_millis(300)
                && ids.iter().any(|&i| !c.probe_seen(i as usize))
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// One measured run of `case`.
    pub(super) fn run(
        &mut self,
        case: Case,
        round: usize,
        args: &Args,
        sets: &TrafficSets,
    ) -> RunResult {
        let mut r = RunResult::new(self.imp, case, round);
        if let Err(e) = self.run_inner(case, args, sets, &mut r) {
            r.error = Some(format!("{e:#}"));
        }
        r
    }

    fn run_inner(
        &mut self,
        case: Case,
        args: &Args,
        sets: &TrafficSets,
        r: &mut RunResult,
    ) -> Result<()> {
        let frames = sets
            .sets
            .get(&(case.traffic, case.frame_len))
            .context("no frame set for this case")?
            .clone();
        let ids: Vec<u32> = match case.traffic {
            Traffic::Single => vec![0],
            Traffic::Mix => (0..self.sink.counters.probes_count() as u32).collect(),
        };
        r.ready_s = self.ready(&ids, Duration::from_secs(30), sets)?;
        r.loadavg = sys::loadavg();
        let s0 = self.snap(true);
        self.sender.generator.start(frames)?;
        let warm = sleep_checking(self.router.as_mut(), args.warmup);
        let a = self.snap(false);
        let alive = warm.and_then(|()| sleep_checking(self.router.as_mut(), args.seconds));
        let b = self.snap(false);
        // Stopped whatever happened, so that the next run starts from an idle generator.
        let report = self.sender.generator.stop(STALL + Duration::from_secs(5))?;
        alive?;
        // Frames in flight: wait until the sink has seen nothing new for 300 ms.
        let t_stop = Instant::now();
        let (mut last, mut quiet_since) = (self.sink.counters.frames.load(Relaxed), t_stop);
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.sink.counters.frames.load(Relaxed);
            if now != last {
                (last, quiet_since) = (now, Instant::now());
            } else if quiet_since.elapsed() >= Duration::from_millis(300) {
                break;
            }
            if t_stop.elapsed().as_secs_f64() > args.drain {
                r.still_arriving = true;
                break;
            }
        }
        let end = self.snap(true);
        let window = (b.t - a.t).as_secs_f64().max(1e-9);
        r.seconds = window;
        r.sent = report.sent;
        r.sent_on_stream = report.on_stream;
        r.generator_relinks = report.relinks;
        r.generator_error = report.error;
        r.delivered = end.frames - s0.frames;
        r.delivered_on_stream = end.stream_frames - s0.stream_frames;
        r.dropped = r.sent.saturating_sub(r.delivered);
        r.frames_per_s = (b.frames - a.frames) as f64 / window;
        r.gbit_per_s = (b.bytes - a.bytes) as f64 * 8.0 / window / 1e9;
        r.router_cpu_s = b.router_cpu - a.router_cpu;
        r.bench_cpu_s = b.bench_cpu - a.bench_cpu;
        r.steal_s = b.steal - a.steal;
        r.sink_resets = end.sink_down - s0.sink_down;
        r.sender_resets = end.sender_down - s0.sender_down;
        // The last reasons each peer kept, one per link that went down during the run.
        let reasons = |p: &Peer, n: u64| {
            let all = p.counters.closes();
            let from = all.len().saturating_sub(n as usize);
            all.into_iter().skip(from)
        };
        r.reset_reasons = reasons(&self.sink, r.sink_resets)
            .map(|w| format!("sink: {w}"))
            .chain(reasons(&self.sender, r.sender_resets).map(|w| format!("sender: {w}")))
            .collect();
        r.sink_quic_datagrams = end.sink_dgrams.zip(s0.sink_dgrams).map(|(e, s)| e - s);
        r.stock_too_large = end.too_large.saturating_sub(s0.too_large);
        r.udp_rcvbuf_errors = end.udp_rcvbuf.saturating_sub(s0.udp_rcvbuf);
        r.router_counters = diff_counters(&s0.counters, &end.counters);
        Ok(())
    }

    /// The counters now; `full` adds the router's own counters and log, which take
    /// milliseconds to read (at the start and the end of a run, not around its window).
    fn snap(&self, full: bool) -> Snap {
        let counters = self
            .metrics
            .filter(|_| full)
            .and_then(|m| sys::http_get(m, "/metrics", Duration::from_secs(2)).ok())
            .map(|t| parse_counters(&t))
            .unwrap_or_default();
        let too_large = match (&self.router, self.imp) {
            (Some(r), Impl::Stock) if full => std::fs::read_to_string(r.log())
                .map(|l| l.matches("too large").count() as u64)
                .unwrap_or(0),
            _ => 0,
        };
        let sink = &self.sink.counters;
        Snap {
            t: Instant::now(),
            frames: sink.frames.load(Relaxed),
            bytes: sink.bytes.load(Relaxed),
            stream_frames: sink.stream_frames.load(Relaxed),
            sink_down: sink.links_down.load(Relaxed),
            sender_down: self.sender.counters.links_down.load(Relaxed),
            sink_dgrams: self.sink.quic_stats().map(|s| s.datagram_frames_rx),
            router_cpu: self.router.as_ref().map_or(0.0, Proc::cpu_seconds),
            bench_cpu: sys::cpu_seconds(std::process::id()).unwrap_or(0.0),
            steal: sys::steal_seconds(),
            too_large,
            udp_rcvbuf: sys::udp_rcvbuf_errors(),
            counters,
        }
    }
}

/// Counters at one moment of a run.
struct Snap {
    t: Instant,
    frames: u64,
    bytes: u64,
    stream_frames: u64,
    sink_down: u64,
    sender_down: u64,
    sink_dgrams: Option<u64>,
    router_cpu: f64,
    bench_cpu: f64,
    steal: f64,
    too_large: u64,
    udp_rcvbuf: u64,
    counters: BTreeMap<String, f64>,
}

/// Sums every `hyphae_*_total` counter of a Prometheus text page over its labels.
fn parse_counters(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if let (Some(name), Ok(v)) = (name.strip_suffix("_total"), value.parse::<f64>()) {
            *m.entry(name.trim_start_matches("hyphae_").to_owned())
                .or_insert(0.0) += v;
        }
    }
    m
}

/// The counters that changed between two snapshots, and by how much.
fn diff_counters(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.iter()
        .filter_map(|(k, v)| {
            let d = v - a.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

/// A fake peer announcing `p`, listening for a link of kind `link`.
fn listen(link: LinkKind, p: &Arc<Prefixes>) -> Result<Peer> {
    match link {
        LinkKind::Tcp => fake_peer::tcp::listen(p.clone()),
        LinkKind::Quic => fake_peer::quic::listen(p.clone()),
    }
}

/// A fake peer announcing `p`, dialing `to` over a link of kind `link`.
fn dial(link: LinkKind, p: &Arc<Prefixes>, to: SocketAddr) -> Result<Peer> {
    match link {
        LinkKind::Tcp => fake_peer::tcp::dial(p.clone(), to),
        LinkKind::Quic => fake_peer::quic::dial(p.clone(), to),
    }
}

/// Sleeps `secs`, failing early if `p` exits.
fn sleep_checking(mut p: Option<&mut Proc>, secs: f64) -> Result<()> {
    let end = Instant::now() + Duration::from_secs_f64(secs.max(0.0));
    loop {
        if let Some(p) = p.as_deref_mut() {
            p.check()?;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`, failing early when `p`
/// exits.
fn wait_for<T>(
    what: &str,
    limit: Duration,
    p: &mut Proc,
    f: impl FnMut() -> Option<T>,
) -> Result<T> {
    let every = Duration::from_millis(50);
    match sys::poll_until(limit, every, || p.check(), f)? {
        Some(v) => Ok(v),
        None => bail!(
            "{what}: not within {limit:?}; end of {}:\n{}",
            p.log().display(),
            sys::tail(p.log(), 10)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_over_labels() {
        let text = "# TYPE hyphae_forwarded_total counter\n\
                    hyphae_forwarded_total{worker=\"0\"} 5\n\
                    hyphae_forwarded_total{worker=\"1\"} 7\n\
                    hyphae_peers 2\n";
        let m = parse_counters(text);
        assert_eq!(m.get("forwarded"), Some(&12.0));
        assert_eq!(m.len(), 1);
    }
}
