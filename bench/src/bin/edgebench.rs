//! Federation through the edges: signed synthetic federation requests from a load client through
//! edge A, two routers and edge B to a fake destination homeserver, against the same client
//! talking HTTPS straight to it.
//!
//! ```text
//! relayed: client --CONNECT+TLS--> edge A --local socket--> router A ==TCP== router B
//!                                              router B --local socket--> edge B --HTTPS--> HS B
//! direct:  client ------------------------------TLS--------------------------------------> HS B
//! ```
//!
//! The routers and edges are child processes (`hyphae-router`, `hyphae-edge`); the fake
//! homeservers (testkit `FakeHomeserver`: every request's X-Matrix signature is checked on
//! arrival) and the load client (testkit `FederationClient`, which goes through the CONNECT proxy
//! the way Synapse does) run in this process. Both paths use the same client code, signing key
//! and destination name.
//!
//! ```text
//! cargo build --release -p hyphae-router -p hyphae-edge -p hyphae-bench
//! target/release/edgebench                       # add --stock PATH for the stock-router mode
//! ```
//!
//! Runs, in order:
//! 1. a big response (`--big-mb`, 50 MB) through the edges: byte count and content checked, and
//!    each edge's peak RSS growth (VmHWM after minus VmRSS before, with the peak reset through
//!    `/proc/PID/clear_refs` first), which must stay within `--rss-limit-mb`;
//! 2. latency of small `/send` transactions (about 1 KB of JSON), one request at a time, in
//!    rounds where the relayed and the direct path take turns; the added p50 is the median of
//!    the per-round differences, with their min..max spread;
//! 3. throughput: `--concurrency` requests in flight, relayed and direct in turns, with each
//!    process's CPU time per relayed request (where the time goes);
//! 4. 1 MB bodies both ways (a 1 MB `/send` PUT, a 1 MB media download), in rounds as in 2,
//!    with MB/s;
//! 5. with `--stock PATH` or `HYPHAE_STOCK_MYCELIUM`: router B replaced by a stock mycelium node
//!    and edge B on its HTTP message API (`router = "http://..."`), small-request latency and
//!    throughput again.
//!
//! Every response must be 200 (and the right length where it is known); any other outcome is
//! counted, and the run exits with status 1 after printing its figures. Child processes are
//! killed on exit, on panic (drop) and when this process dies (`PR_SET_PDEATHSIG`).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use hyphae_bench::free_port;
use hyphae_bench::sys::{Proc, cpu_seconds, status_bytes};
use hyphae_edge::testkit::{self, FakeHomeserver, FederationClient, RequestBody, TestCa};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(about = "Federation through two edges and two routers, against a direct HTTPS client")]
struct Args {
    /// The router binary (default: `hyphae-router` next to this one).
    #[arg(long)]
    router: Option<PathBuf>,
    /// The edge binary (default: `hyphae-edge` next to this one).
    #[arg(long)]
    edge: Option<PathBuf>,
    /// A stock mycelium 0.7.10 binary: also measure with it as router B (default:
    /// $HYPHAE_STOCK_MYCELIUM when set).
    #[arg(long)]
    stock: Option<PathBuf>,
    /// Skip the stock-router mode even when $HYPHAE_STOCK_MYCELIUM is set.
    #[arg(long, conflicts_with = "stock_only")]
    no_stock: bool,
    /// Only the stock-router mode (and its direct baseline).
    #[arg(long)]
    stock_only: bool,
    /// Router I/O driver (auto, uring, portable).
    #[arg(long, default_value = "auto")]
    driver: String,
    /// Router data-plane workers.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Latency rounds (each path runs once per round) [full: 10, quick: 3].
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds of each path's turn in a latency round [full: 2, quick: 0.1].
    #[arg(long)]
    round_seconds: Option<f64>,
    /// Seconds of each throughput run [full: 5, quick: 0.3].
    #[arg(long)]
    seconds: Option<f64>,
    /// Throughput runs per path, in turns [full: 3, quick: 1].
    #[arg(long)]
    tput_rounds: Option<usize>,
    /// Requests in flight in the throughput runs [full: 64, quick: 8].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Size of the big response, in MB (MiB) [full: 50, quick: 8].
    #[arg(long)]
    big_mb: Option<u64>,
    /// Most an edge's RSS may grow while the big response crosses, in MB (MiB).
    #[arg(long, default_value_t = 16)]
    rss_limit_mb: u64,
    /// Rounds and runs redone per section when other sessions' work took more than 10 % of a
    /// vCPU during them [full: 10, quick: 0].
    #[arg(long)]
    retries: Option<usize>,
    /// Sign every request as it is sent (default: requests are signed once, before the runs,
    /// from a pool of distinct transactions, so the load client spends its CPU on sending).
    #[arg(long)]
    sign_each: bool,
    /// A short CI smoke run: a few hundred requests, an 8 MB big response, same checks.
    #[arg(long)]
    quick: bool,
    /// Before starting, wait up to this many seconds for the machine to be quiet (other work
    /// below 10 % of one vCPU over a second); 0 only reports how busy it is.
    #[arg(long, default_value_t = 0.0)]
    wait_quiet: f64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the scratch directory (configs, logs) after a successful run.
    #[arg(long)]
    keep: bool,
}

/// The run's settings after `--quick` and defaults.
#[derive(Debug, Clone)]
struct Settings {
    rounds: usize,
    round_seconds: f64,
    min_per_turn: u64,
    seconds: f64,
    tput_rounds: usize,
    concurrency: usize,
    big: u64,
    rss_limit: u64,
    pool: usize,
    sign_each: bool,
    quick: bool,
    retries: usize,
}

impl Settings {
    fn from(a: &Args) -> Self {
        let q = a.quick;
        Self {
            rounds: a.rounds.unwrap_or(if q { 3 } else { 10 }).max(1),
            round_seconds: a.round_seconds.unwrap_or(if q { 0.1 } else { 2.0 }),
            min_per_turn: if q { 3 } else { 5 },
            seconds: a.seconds.unwrap_or(if q { 0.3 } else { 5.0 }),
            tput_rounds: a.tput_rounds.unwrap_or(if q { 1 } else { 3 }).max(1),
            concurrency: a.concurrency.unwrap_or(if q { 8 } else { 64 }).max(1),
            big: a.big_mb.unwrap_or(if q { 8 } else { 50 }) << 20,
            rss_limit: a.rss_limit_mb << 20,
            pool: if q { 32 } else { 1024 },
            sign_each: a.sign_each,
            quick: q,
            retries: a.retries.unwrap_or(if q { 0 } else { 10 }),
        }
    }
}

const MB: u64 = 1 << 20;
/// Most other sessions' work (in vCPUs) a measured round may share the machine with.
const MAX_OTHER: f64 = 0.1;
const SMALL_TARGET: &str = "/_matrix/federation/v1/send/";

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// Polls `f` every 50 ms until it returns `Some`, for at most `timeout`, failing early when one
/// of `procs` exits.
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    procs: &mut [&mut Proc],
    mut f: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        for p in procs.iter_mut() {
            p.check()?;
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 request with `Connection: close` (setup and control only, never measured):
/// the status and the body parsed as JSON (`Null` if it is not JSON).
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status from {addr}{path}"))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// /proc: CPU time and memory of the processes
// ---------------------------------------------------------------------------------------------

/// The whole machine's CPU time from /proc/stat, in seconds.
#[derive(Debug, Clone, Copy, Default)]
struct MachineCpu {
    /// User and system time of all tasks (what /proc/PID/stat charges to processes).
    tasks: f64,
    /// Interrupts and softirqs (loopback TCP receive work lands here too).
    irq: f64,
    idle: f64,
    steal: f64,
}

fn machine_cpu() -> MachineCpu {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse::<f64>().ok())
        .map(|t| t / 100.0)
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal
    MachineCpu {
        tasks: get(0) + get(1) + get(2),
        irq: get(5) + get(6),
        idle: get(3) + get(4),
        steal: get(7),
    }
}

/// Resets a process's peak RSS (VmHWM) to its current RSS; whether it worked.
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// CPU seconds of a set of processes, to take differences over a run.
#[derive(Debug, Clone)]
struct CpuSnap {
    per: Vec<(String, f64)>,
    machine: MachineCpu,
}

fn cpu_snap(pids: &[(String, u32)]) -> CpuSnap {
    CpuSnap {
        per: pids
            .iter()
            .map(|(l, p)| (l.clone(), cpu_seconds(*p).unwrap_or(0.0)))
            .collect(),
        machine: machine_cpu(),
    }
}

/// CPU seconds spent per process between two snapshots, summed over runs.
#[derive(Debug, Clone, Default)]
struct CpuUse {
    per: Vec<(String, f64)>,
    tasks: f64,
    irq: f64,
    idle: f64,
    steal: f64,
}

impl CpuUse {
    fn add(&mut self, a: &CpuSnap, b: &CpuSnap) {
        for ((l, x), (_, y)) in a.per.iter().zip(&b.per) {
            match self.per.iter_mut().find(|(k, _)| k == l) {
                Some((_, s)) => *s += y - x,
                None => self.per.push((l.clone(), y - x)),
            }
        }
        self.tasks += b.machine.tasks - a.machine.tasks;
        self.irq += b.machine.irq - a.machine.irq;
        self.idle += b.machine.idle - a.machine.idle;
        self.steal += b.machine.steal - a.machine.steal;
    }

    fn total(&self) -> f64 {
        self.per.iter().map(|(_, s)| s).sum()
    }

    /// CPU time of tasks other than ours (other sessions' work, kernel threads).
    fn others(&self) -> f64 {
        (self.tasks - self.total()).max(0.0)
    }

    fn json(&self, requests: u64) -> Value {
        let per_req = |s: f64| s * 1e6 / requests.max(1) as f64;
        json!({
            "irq_softirq_us_per_request": per_req(self.irq),
            "processes": self.per.iter().map(|(l, s)| json!({"process": l, "cpu_s": s,
                "us_per_request": per_req(*s)})).collect::<Vec<_>>(),
            "total_us_per_request": per_req(self.total() + self.irq),
            "other_tasks_s": self.others(), "irq_softirq_s": self.irq,
            "machine_idle_s": self.idle, "host_steal_s": self.steal,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The world: two routers, two edges
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Bins {
    router: PathBuf,
    edge: PathBuf,
    stock: Option<PathBuf>,
}

struct Node {
    proc: Proc,
    api: SocketAddr,
    tcp: u16,
    sock: Option<PathBuf>,
    pubkey: String,
}

/// A homeserver as the edges see it: its server name and federation listener.
#[derive(Debug, Clone)]
struct HsInfo {
    name: String,
    addr: SocketAddr,
}

struct World {
    kind: &'static str,
    dir: PathBuf,
    // Declaration order is drop order: edges stop before the routers.
    edge_a: Proc,
    edge_b: Proc,
    router_a: Node,
    router_b: Node,
    edge_a_proxy: SocketAddr,
    edge_a_ca: String,
}

impl World {
    /// Starts router A (hyphae), router B (hyphae, or stock mycelium when `stock` is given),
    /// edge A for `origin` and edge B for `dest`, and routes `dest` on edge A to router B.
    fn start(
        bins: &Bins,
        a: &Args,
        dir: &Path,
        stock: Option<&Path>,
        origin: &HsInfo,
        dest: &HsInfo,
        ca_pem: &Path,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let kind = if stock.is_some() { "stock" } else { "hyphae" };
        // Router B first; router A dials it (as in federation-edge/e2e).
        let mut router_b = match stock {
            Some(s) => start_stock(s, dir, "router-b")?,
            None => start_router(bins, a, dir, "router-b", 0x62, None)?,
        };
        let mut router_a = start_router(bins, a, dir, "router-a", 0x61, Some(router_b.tcp))?;
        for r in [&mut router_a, &mut router_b] {
            let api = r.api;
            r.pubkey = wait_for(
                &format!("{}'s API", r.proc.label()),
                Duration::from_secs(20),
                &mut [&mut r.proc],
                || {
                    let (status, v) = http(api, "GET", "/api/v1/admin", None).ok()?;
                    let pk = v.get("nodePubkey").or_else(|| v.get("publicKey"))?;
                    (status == 200).then(|| pk.as_str().map(str::to_owned))?
                },
            )?;
        }
        // Before the edges start: a stock node's API answers nothing else while a message
        // long poll (edge B's HTTP driver) is pending.
        for r in [&mut router_a, &mut router_b] {
            let api = r.api;
            wait_for(
                &format!("a selected route on {}", r.proc.label()),
                Duration::from_secs(30),
                &mut [&mut r.proc],
                || {
                    let (_, v) = http(api, "GET", "/api/v1/admin/routes/selected", None).ok()?;
                    v.as_array().is_some_and(|a| !a.is_empty()).then_some(())
                },
            )?;
        }
        let (mut edge_a, proxy_a, api_a) =
            start_edge(bins, dir, "edge-a", &router_a, origin, ca_pem)?;
        let (mut edge_b, _, api_b) = start_edge(bins, dir, "edge-b", &router_b, dest, ca_pem)?;
        for (e, api) in [(&mut edge_a, api_a), (&mut edge_b, api_b)] {
            wait_for(
                &format!("{}'s bridge API", e.label()),
                Duration::from_secs(20),
                &mut [&mut *e],
                || {
                    let (s, _) = http(api, "GET", "/api/v1/bridge/status", None).ok()?;
                    (s == 200).then_some(())
                },
            )?;
        }
        let route = json!({"server_name": dest.name, "pubkey": router_b.pubkey,
                           "fallback": "never"});
        let (status, body) = http(api_a, "POST", "/api/v1/bridge/routes", Some(&route))?;
        if !(200..300).contains(&status) {
            bail!("edge A refused the route to {}: {status} {body}", dest.name);
        }
        let edge_a_ca =
            std::fs::read_to_string(dir.join("edge-a/state/ca.crt")).context("edge A's ca.crt")?;
        Ok(Self {
            kind,
            dir: dir.to_owned(),
            edge_a,
            edge_b,
            router_a,
            router_b,
            edge_a_proxy: proxy_a,
            edge_a_ca,
        })
    }

    fn pids(&self) -> Vec<(String, u32)> {
        vec![
            ("edge A".into(), self.edge_a.pid()),
            ("router A".into(), self.router_a.proc.pid()),
            (
                if self.kind == "stock" {
                    "router B (stock)".into()
                } else {
                    "router B".into()
                },
                self.router_b.proc.pid(),
            ),
            ("edge B".into(), self.edge_b.pid()),
            ("bench (client + fake HS)".into(), std::process::id()),
        ]
    }

    fn check(&mut self) -> Result<()> {
        self.edge_a.check()?;
        self.edge_b.check()?;
        self.router_a.proc.check()?;
        self.router_b.proc.check()
    }

    fn describe(&self) -> String {
        format!(
            "{} world in {}: edge A pid {}, router A pid {} (sock {}), router B pid {} ({}), \
             edge B pid {}",
            self.kind,
            self.dir.display(),
            self.edge_a.pid(),
            self.router_a.proc.pid(),
            self.router_a
                .sock
                .as_deref()
                .map_or_else(String::new, |p| p.display().to_string()),
            self.router_b.proc.pid(),
            self.router_b.pubkey.get(..12).unwrap_or_default(),
            self.edge_b.pid(),
        )
    }
}

fn start_router(
    bins: &Bins,
    a: &Args,
    dir: &Path,
    name: &str,
    seed: u8,
    peer: Option<u16>,
) -> Result<Node> {
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&key, [seed; 32])?;
    let sock = dir.join(format!("{name}.sock"));
    let (tcp, quic, api) = (free_port()?, free_port()?, free_port()?);
    let mut cmd = Command::new(&bins.router);
    cmd.arg("-k")
        .arg(&key)
        .args(["--no-tun", "--disable-peer-discovery", "--silent"])
        .args(["-t", &tcp.to_string(), "-q", &quic.to_string()])
        .args(["--api-addr", &format!("127.0.0.1:{api}")])
        .args(["--driver", &a.driver, "--workers", &a.workers.to_string()])
        .arg("--local-socket")
        .arg(&sock);
    if let Some(p) = peer {
        cmd.args(["--peers", &format!("tcp://127.0.0.1:{p}")]);
    }
    let proc = Proc::spawn(name, &mut cmd, dir.join(format!("{name}.log")))?;
    Ok(Node {
        proc,
        api: SocketAddr::from(([127, 0, 0, 1], api)),
        tcp,
        sock: Some(sock),
        pubkey: String::new(),
    })
}

fn start_stock(bin: &Path, dir: &Path, name: &str) -> Result<Node> {
    let node_dir = dir.join(name);
    std::fs::create_dir_all(&node_dir)?;
    let cfg = node_dir.join("mycelium.toml");
    std::fs::write(&cfg, "peers = []\n")?;
    let (tcp, quic, api, rpc) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let mut cmd = Command::new(bin);
    cmd.current_dir(&node_dir)
        .arg("-k")
        .arg(node_dir.join("priv_key.bin"))
        .arg("-c")
        .arg(&cfg)
        .args(["--no-tun", "--disable-peer-discovery"])
        .args(["-t", &tcp.to_string(), "-q", &quic.to_string()])
        .args(["--api-addr", &format!("127.0.0.1:{api}")])
        .args(["--jsonrpc-addr", &format!("127.0.0.1:{rpc}")]);
    let proc = Proc::spawn(
        &format!("{name} (stock mycelium)"),
        &mut cmd,
        dir.join(format!("{name}.log")),
    )?;
    Ok(Node {
        proc,
        api: SocketAddr::from(([127, 0, 0, 1], api)),
        tcp,
        sock: None,
        pubkey: String::new(),
    })
}

/// Writes the edge's config, runs `init`, starts it; returns it with its proxy and API
/// addresses.
fn start_edge(
    bins: &Bins,
    dir: &Path,
    name: &str,
    router: &Node,
    hs: &HsInfo,
    ca_pem: &Path,
) -> Result<(Proc, SocketAddr, SocketAddr)> {
    let state = dir.join(name).join("state");
    std::fs::create_dir_all(&state)?;
    let (proxy, api) = (free_port()?, free_port()?);
    let s = |v: &str| Value::from(v).to_string(); // a TOML basic string, as JSON writes it
    let router_url = match &router.sock {
        Some(sock) => format!("unix:{}", sock.display()),
        None => format!("http://{}", router.api),
    };
    let text = format!(
        "proxy = {}\napi = {}\nrouter = {}\nrouter_api = {}\nstate_dir = {}\n\n\
         [homeserver]\nserver_names = [{}]\nfederation_url = {}\nca_file = {}\n",
        s(&format!("127.0.0.1:{proxy}")),
        s(&format!("127.0.0.1:{api}")),
        s(&router_url),
        s(&format!("http://{}", router.api)),
        s(&state.display().to_string()),
        s(&hs.name),
        s(&format!("https://{}", hs.addr)),
        s(&ca_pem.display().to_string()),
    );
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, text)?;
    let init = Command::new(&bins.edge)
        .arg("--config")
        .arg(&config)
        .arg("init")
        .output()
        .with_context(|| format!("running {} init", bins.edge.display()))?;
    if !init.status.success() {
        bail!(
            "{name}: hyphae-edge init failed: {}",
            String::from_utf8_lossy(&init.stderr).trim()
        );
    }
    let mut cmd = Command::new(&bins.edge);
    cmd.arg("--config").arg(&config).env("RUST_LOG", "warn");
    let proc = Proc::spawn(name, &mut cmd, dir.join(format!("{name}.log")))?;
    Ok((
        proc,
        SocketAddr::from(([127, 0, 0, 1], proxy)),
        SocketAddr::from(([127, 0, 0, 1], api)),
    ))
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// A request ready to go: signed once (unless `--sign-each`).
#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    target: String,
    body: Option<Bytes>,
    auth: String,
    /// The response body's length when it is known (downloads).
    expect_len: Option<usize>,
}

impl Req {
    fn new(
        client: &FederationClient,
        dest: &str,
        method: &'static str,
        target: String,
        body: Option<Value>,
        expect_len: Option<usize>,
    ) -> Result<Self> {
        let auth = client
            .sign(dest, method, &target, body.as_ref())
            .context("signing")?
            .to_string();
        let body = body
            .map(|b| serde_json::to_vec(&b).map(Bytes::from))
            .transpose()?;
        Ok(Self {
            method,
            target,
            body,
            auth,
            expect_len,
        })
    }

    fn body_len(&self) -> u64 {
        self.body.as_ref().map_or(0, |b| b.len() as u64)
    }
}

/// A `/send` transaction whose JSON is about `size` bytes.
fn transaction(origin: &str, txn: u64, size: usize) -> Value {
    let mut v = json!({
        "origin": origin,
        "origin_server_ts": 1_700_000_000_000u64 + txn,
        "pdus": [{
            "type": "m.room.message",
            "room_id": "!bench:localhost",
            "sender": format!("@bench:{origin}"),
            "origin_server_ts": 1_700_000_000_000u64 + txn,
            "content": {"msgtype": "m.text", "body": ""},
        }],
        "edus": [],
    });
    let base = v.to_string().len();
    let filler: String = (0..size.saturating_sub(base))
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    v["pdus"][0]["content"]["body"] = Value::from(filler);
    v
}

/// The outcomes that were not a 200 with the right body, counted; the first few kept.
#[derive(Debug, Default)]
struct Errors {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl Errors {
    fn add(&self, what: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() < 5 {
            f.push(what);
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The two ways to the destination.
struct Clients {
    relayed: Arc<FederationClient>,
    direct: Arc<FederationClient>,
}

/// Sends one request; `Ok(response body length)` when the answer is a 200 of the right length.
async fn send(
    client: &FederationClient,
    dest: &str,
    r: &Req,
    sign_each: bool,
) -> Result<usize, String> {
    let body = r.body.clone().map(RequestBody::Raw);
    let resp = if sign_each {
        client.request(dest, r.method, &r.target, body).await
    } else {
        client
            .request_with_authorization(dest, r.method, &r.target, body, Some(&r.auth))
            .await
    };
    match resp {
        Ok(resp) if resp.status == 200 => match r.expect_len {
            Some(n) if resp.body.len() != n => Err(format!(
                "{} {}: {} bytes, expected {n}",
                r.method,
                r.target,
                resp.body.len()
            )),
            _ => Ok(resp.body.len()),
        },
        Ok(resp) => Err(format!(
            "{} {}: {} {}",
            r.method,
            r.target,
            resp.status,
            String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
        )),
        Err(e) => Err(format!("{} {}: {e:#}", r.method, r.target)),
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram bounds are valid")
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

// ---------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------

struct Ctx {
    dest: String,
    set: Settings,
    errors: Errors,
}

/// One path's figures over a latency run.
#[derive(Debug)]
struct PathLat {
    h: Histogram<u64>,
    round_p50_us: Vec<f64>,
    busy_ns: u128,
    bytes: u64,
}

impl PathLat {
    fn new() -> Self {
        Self {
            h: hist(),
            round_p50_us: Vec::new(),
            busy_ns: 0,
            bytes: 0,
        }
    }

    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / MB as f64 / (self.busy_ns as f64 / 1e9)
    }

    fn json(&self) -> Value {
        json!({"requests": self.h.len(), "p50_us": us(self.h.value_at_quantile(0.5)),
               "p99_us": us(self.h.value_at_quantile(0.99)), "max_us": us(self.h.max()),
               "round_p50_us": self.round_p50_us})
    }
}

/// The added p50: the median over rounds of (relayed p50 - direct p50) in the round.
#[derive(Debug, Clone, Copy)]
struct Added {
    median: f64,
    min: f64,
    max: f64,
}

impl Added {
    fn of(relayed: &[f64], direct: &[f64]) -> Self {
        let d: Vec<f64> = relayed.iter().zip(direct).map(|(r, d)| r - d).collect();
        let (min, max) = min_max(&d);
        Self {
            median: median(&d),
            min,
            max,
        }
    }

    /// Conclusive only when every round saw the relayed path slower and the median difference
    /// is larger than half the spread of the rounds' differences.
    fn conclusive(&self) -> bool {
        self.min > 0.0 && self.median > (self.max - self.min) / 2.0
    }

    fn text(&self, n: usize) -> String {
        if self.conclusive() {
            format!(
                "+{:.1} us (median of {n} rounds, spread {:.1}..{:.1})",
                self.median, self.min, self.max
            )
        } else {
            format!(
                "inconclusive: per-round differences {:.1}..{:.1} us over {n} rounds",
                self.min, self.max
            )
        }
    }

    fn json(&self) -> Value {
        json!({"median_us": self.conclusive().then_some(self.median), "min_us": self.min,
               "max_us": self.max, "conclusive": self.conclusive()})
    }
}

/// One path's turn in a latency round.
#[derive(Debug)]
struct Turn {
    h: Histogram<u64>,
    busy_ns: u128,
    bytes: u64,
}

impl PathLat {
    fn take(&mut self, t: &Turn) {
        self.h.add(&t.h).expect("histograms with equal bounds add");
        self.round_p50_us.push(us(t.h.value_at_quantile(0.5)));
        self.busy_ns += t.busy_ns;
        self.bytes += t.bytes;
    }
}

/// Closed loop, one request at a time, on one path for `secs` and at least `min_per_turn`
/// requests.
async fn turn(
    ctx: &Ctx,
    client: &FederationClient,
    reqs: &[Req],
    next: &mut usize,
    secs: f64,
) -> Turn {
    let mut t = Turn {
        h: hist(),
        busy_ns: 0,
        bytes: 0,
    };
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs || n < ctx.set.min_per_turn {
        let r = &reqs[*next % reqs.len()];
        *next += 1;
        let t0 = Instant::now();
        match send(client, &ctx.dest, r, ctx.set.sign_each).await {
            Ok(len) => {
                let ns = t0.elapsed().as_nanos();
                t.h.saturating_record(u64::try_from(ns).unwrap_or(u64::MAX));
                t.busy_ns += ns;
                t.bytes += r.body_len() + len as u64;
            }
            Err(e) => {
                ctx.errors.add(e);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        n += 1;
        if n > 1_000_000 {
            break;
        }
    }
    t
}

/// Other sessions' CPU time between two snapshots, in vCPUs (1.0 = one vCPU busy).
fn other_load(a: &CpuSnap, b: &CpuSnap, secs: f64) -> f64 {
    let mut u = CpuUse::default();
    u.add(a, b);
    u.others() / secs.max(1e-3)
}

/// Whether a round is kept: other work took at most `MAX_OTHER` of a vCPU during it, or no
/// retry is left (then it counts as disturbed but kept). Waits for a quiet machine before a
/// retry.
async fn keep_round(
    ctx: &Ctx,
    load: f64,
    retries: &mut usize,
    disturbed: &mut usize,
    pids: &[(String, u32)],
) -> bool {
    if load <= MAX_OTHER {
        return true;
    }
    *disturbed += 1;
    if *retries >= ctx.set.retries {
        return true;
    }
    *retries += 1;
    // Wait (up to 30 s) for a second in which others stay under the bound.
    for _ in 0..30 {
        let a = cpu_snap(pids);
        tokio::time::sleep(Duration::from_secs(1)).await;
        if other_load(&a, &cpu_snap(pids), 1.0) <= MAX_OTHER {
            break;
        }
    }
    false
}

/// What other sessions did to a section: rounds disturbed (other work above `MAX_OTHER`) and
/// redone.
#[derive(Debug, Clone, Copy, Default)]
struct Disturbance {
    disturbed: usize,
    redone: usize,
}

impl Disturbance {
    fn text(&self) -> String {
        match (self.disturbed, self.redone) {
            (0, _) => String::new(),
            (d, r) if d == r => format!(" [{d} disturbed rounds redone]"),
            (d, r) => format!(" [{d} rounds disturbed by other work, {r} redone, rest kept]"),
        }
    }

    fn json(&self) -> Value {
        json!({"disturbed_rounds": self.disturbed, "redone": self.redone})
    }
}

/// Rounds in which the relayed and the direct path take turns (alternating which goes first).
/// A round during which other sessions' work took more than `MAX_OTHER` of a vCPU is redone
/// (at most `--retries` times per section).
async fn latency_rounds(
    ctx: &Ctx,
    paths: &Clients,
    reqs: &[Req],
    rounds: usize,
    secs: f64,
    pids: &[(String, u32)],
) -> (PathLat, PathLat, Disturbance) {
    let (mut rel, mut dir) = (PathLat::new(), PathLat::new());
    let (mut nr, mut nd) = (0usize, 0usize);
    let (mut retries, mut disturbed) = (0usize, 0usize);
    // Warm both paths (connections, TLS sessions, routes) outside the figures.
    for _ in 0..3 {
        let _ = send(&paths.relayed, &ctx.dest, &reqs[0], ctx.set.sign_each).await;
        let _ = send(&paths.direct, &ctx.dest, &reqs[0], ctx.set.sign_each).await;
    }
    let mut round = 0;
    while round < rounds {
        let before = cpu_snap(pids);
        let t0 = Instant::now();
        let (tr, td) = if round % 2 == 0 {
            let tr = turn(ctx, &paths.relayed, reqs, &mut nr, secs).await;
            let td = turn(ctx, &paths.direct, reqs, &mut nd, secs).await;
            (tr, td)
        } else {
            let td = turn(ctx, &paths.direct, reqs, &mut nd, secs).await;
            let tr = turn(ctx, &paths.relayed, reqs, &mut nr, secs).await;
            (tr, td)
        };
        let load = other_load(&before, &cpu_snap(pids), t0.elapsed().as_secs_f64());
        if keep_round(ctx, load, &mut retries, &mut disturbed, pids).await {
            rel.take(&tr);
            dir.take(&td);
            round += 1;
        }
    }
    let d = Disturbance {
        disturbed,
        redone: retries,
    };
    (rel, dir, d)
}

/// One throughput run: `concurrency` tasks, each one request at a time, for `secs`.
async fn throughput_run(
    ctx: &Arc<Ctx>,
    client: &Arc<FederationClient>,
    reqs: &Arc<Vec<Req>>,
    secs: f64,
) -> (u64, f64, Histogram<u64>) {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..ctx.set.concurrency {
        let (ctx, client, reqs) = (ctx.clone(), client.clone(), reqs.clone());
        tasks.spawn(async move {
            let mut h = hist();
            let mut i = t * 7919;
            let mut n = 0u64;
            while Instant::now() < end {
                let r = &reqs[i % reqs.len()];
                i += 1;
                let t0 = Instant::now();
                match send(&client, &ctx.dest, r, ctx.set.sign_each).await {
                    Ok(_) => {
                        h.saturating_record(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(0));
                        n += 1;
                    }
                    Err(e) => {
                        ctx.errors.add(e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (n, h)
        });
    }
    let mut total = 0;
    let mut h = hist();
    while let Some(res) = tasks.join_next().await {
        match res {
            Ok((n, th)) => {
                total += n;
                h.add(&th).expect("histograms with equal bounds add");
            }
            Err(e) => ctx.errors.add(format!("load task failed: {e}")),
        }
    }
    (total, start.elapsed().as_secs_f64(), h)
}

/// A path's throughput runs.
#[derive(Debug)]
struct Tput {
    rates: Vec<f64>,
    requests: u64,
    connections: u64,
    h: Histogram<u64>,
    cpu: CpuUse,
}

impl Tput {
    fn new() -> Self {
        Self {
            rates: Vec::new(),
            requests: 0,
            connections: 0,
            h: hist(),
            cpu: CpuUse::default(),
        }
    }

    fn median(&self) -> f64 {
        median(&self.rates)
    }

    fn text(&self) -> String {
        let (lo, hi) = min_max(&self.rates);
        format!(
            "{:.0} req/s (median of {}, {:.0}..{:.0}; {} connections opened); latency \
             under load p50 {:.0} us, p99 {:.0} us",
            self.median(),
            self.rates.len(),
            lo,
            hi,
            self.connections,
            us(self.h.value_at_quantile(0.5)),
            us(self.h.value_at_quantile(0.99)),
        )
    }

    fn json(&self) -> Value {
        json!({"req_per_s_median": self.median(), "req_per_s_runs": self.rates,
               "requests": self.requests, "connections": self.connections, "p50_us": us(self.h.value_at_quantile(0.5)),
               "p99_us": us(self.h.value_at_quantile(0.99)),
               "cpu": self.cpu.json(self.requests)})
    }
}

async fn throughput_rounds(
    ctx: &Arc<Ctx>,
    paths: &Clients,
    reqs: &Arc<Vec<Req>>,
    pids: &[(String, u32)],
) -> (Tput, Tput, Disturbance) {
    let (mut rel, mut dir) = (Tput::new(), Tput::new());
    let opened = (
        paths.relayed.connections_opened(),
        paths.direct.connections_opened(),
    );
    // Open the connections (CONNECT, TLS) outside the figures.
    let warm = (ctx.set.seconds / 5.0).clamp(0.05, 1.0);
    throughput_run(ctx, &paths.relayed, reqs, warm).await;
    throughput_run(ctx, &paths.direct, reqs, warm).await;
    let (mut retries, mut disturbed) = (0usize, 0usize);
    let mut run = 0;
    // Runs alternate between the paths (relayed first in even runs of each path).
    while run < 2 * ctx.set.tput_rounds {
        let relayed_turn = (run / 2 + run) % 2 == 0;
        let (client, out) = if relayed_turn {
            (&paths.relayed, &mut rel)
        } else {
            (&paths.direct, &mut dir)
        };
        let before = cpu_snap(pids);
        let (n, secs, h) = throughput_run(ctx, client, reqs, ctx.set.seconds).await;
        let after = cpu_snap(pids);
        let load = other_load(&before, &after, secs);
        if keep_round(ctx, load, &mut retries, &mut disturbed, pids).await {
            out.cpu.add(&before, &after);
            out.rates.push(n as f64 / secs);
            out.requests += n;
            out.h.add(&h).expect("histograms with equal bounds add");
            run += 1;
        }
    }
    // Kept-alive connections in use (and any opened again after a close).
    rel.connections = paths.relayed.connections_opened() - opened.0;
    dir.connections = paths.direct.connections_opened() - opened.1;
    let d = Disturbance {
        disturbed,
        redone: retries,
    };
    (rel, dir, d)
}

fn cpu_text(c: &CpuUse, requests: u64) -> String {
    let per = |s: f64| s * 1e6 / requests.max(1) as f64;
    let mut t = String::new();
    for (l, s) in &c.per {
        let _ = write!(t, "{l} {:.0}, ", per(*s));
    }
    let total = per(c.total() + c.irq);
    let _ = write!(
        t,
        "interrupts and softirqs (machine-wide) {:.0}; total {total:.0} us CPU per request \
         (2 vCPUs: at most {:.0} req/s at this cost); other tasks took {:.2} s, idle {:.2} s, \
         host steal {:.2} s",
        per(c.irq),
        2e6 / total,
        c.others(),
        c.idle,
        c.steal
    );
    t
}

/// The big response through the edges, with each edge's peak RSS growth.
#[derive(Debug)]
struct BigResult {
    bytes: u64,
    secs: f64,
    ok: bool,
    edges: Vec<(String, u64, u64, bool)>,
}

async fn big_response(ctx: &Ctx, client: &FederationClient, w: &World) -> BigResult {
    let size = ctx.set.big;
    let target = format!("{}?size={size}", testkit::BIG_DOWNLOAD_PATH);
    let edges = [("edge A", w.edge_a.pid()), ("edge B", w.edge_b.pid())];
    let before: Vec<(bool, u64)> = edges
        .iter()
        .map(|(_, pid)| {
            let reset = reset_peak_rss(*pid);
            (reset, status_bytes(*pid, "VmRSS").unwrap_or(0))
        })
        .collect();
    // A sampler as a fallback where the peak cannot be reset.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let pids: Vec<u32> = edges.iter().map(|e| e.1).collect();
        std::thread::spawn(move || {
            let mut max = vec![0u64; pids.len()];
            while !stop.load(Ordering::Relaxed) {
                for (m, p) in max.iter_mut().zip(&pids) {
                    *m = (*m).max(status_bytes(*p, "VmRSS").unwrap_or(0));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            max
        })
    };
    let t = Instant::now();
    let sign = client.sign(&ctx.dest, "GET", &target, None);
    let resp = match sign {
        Ok(x) => {
            client
                .request_with_authorization(&ctx.dest, "GET", &target, None, Some(&x.to_string()))
                .await
        }
        Err(e) => Err(e),
    };
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let sampled = sampler.join().unwrap_or_default();
    let mut ok = false;
    let mut bytes = 0;
    match resp {
        Ok(r) if r.status == 200 => {
            bytes = r.body.len() as u64;
            let pattern_ok = r
                .body
                .iter()
                .enumerate()
                .all(|(i, b)| *b == testkit::big_body_byte(i as u64));
            if bytes != size {
                ctx.errors
                    .add(format!("big response: {bytes} bytes, expected {size}"));
            } else if !pattern_ok {
                ctx.errors.add("big response: wrong bytes".into());
            } else {
                ok = true;
            }
        }
        Ok(r) => ctx.errors.add(format!("big response: status {}", r.status)),
        Err(e) => ctx.errors.add(format!("big response: {e:#}")),
    }
    let edges = edges
        .iter()
        .zip(before)
        .zip(sampled.iter().copied().chain(std::iter::repeat(0)))
        .map(|(((label, pid), (reset, rss0)), sampled)| {
            let peak = if reset {
                status_bytes(*pid, "VmHWM").unwrap_or(0).max(sampled)
            } else {
                sampled
            };
            ((*label).to_owned(), rss0, peak.saturating_sub(rss0), reset)
        })
        .collect();
    BigResult {
        bytes,
        secs,
        ok,
        edges,
    }
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024 / 1024);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} vCPU {model}, {mem} GiB, Linux {}", kernel.trim())
}

/// How busy the machine is (vCPUs in use over one second, before anything of ours runs),
/// after waiting up to `wait` seconds for it to drop below 0.1; and how long that took.
fn quiet(wait: f64) -> (f64, f64) {
    let start = Instant::now();
    loop {
        let m0 = machine_cpu();
        let own0 = cpu_seconds(std::process::id()).unwrap_or(0.0);
        std::thread::sleep(Duration::from_secs(1));
        let m1 = machine_cpu();
        let own1 = cpu_seconds(std::process::id()).unwrap_or(0.0);
        let other = ((m1.tasks + m1.irq - m0.tasks - m0.irq) - (own1 - own0)).max(0.0);
        let waited = start.elapsed().as_secs_f64();
        if other < 0.1 || waited >= wait {
            return (other, waited - 1.0);
        }
    }
}

fn resolve(flag: Option<&PathBuf>, name: &str) -> Result<PathBuf> {
    let p = match flag {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name(name),
    };
    if !p.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p hyphae-router -p hyphae-edge \
             -p hyphae-bench) or pass --{}",
            p.display(),
            name.trim_start_matches("hyphae-")
        );
    }
    Ok(p)
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("edgebench: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The whole benchmark; `Ok(false)` when a check failed (after printing the figures).
fn run(args: &Args) -> Result<bool> {
    let set = Settings::from(args);
    let stock = if args.no_stock {
        None
    } else {
        args.stock.clone().or_else(|| {
            std::env::var_os("HYPHAE_STOCK_MYCELIUM")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
    };
    if args.stock_only && stock.is_none() {
        bail!("--stock-only needs --stock PATH or HYPHAE_STOCK_MYCELIUM");
    }
    if let Some(s) = &stock
        && !s.is_file()
    {
        bail!("stock mycelium binary {} not found", s.display());
    }
    let bins = Bins {
        router: resolve(args.router.as_ref(), "hyphae-router")?,
        edge: resolve(args.edge.as_ref(), "hyphae-edge")?,
        stock,
    };
    let dir = std::env::temp_dir().join(format!("hyphae-edgebench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("edgebench")
        .build()?;
    let result = bench(args, &set, &bins, &dir, &rt);
    if !matches!(result, Ok(true)) {
        eprintln!(
            "edgebench: logs and configs kept in {} (edge-*.log, router-*.log)",
            dir.display()
        );
    } else if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Everything the modes share: the settings, the destination, the direct client, the signed
/// requests, and the figures so far.
struct Run<'a> {
    args: &'a Args,
    set: &'a Settings,
    bins: &'a Bins,
    dir: &'a Path,
    rt: &'a tokio::runtime::Runtime,
    ctx: Arc<Ctx>,
    origin: HsInfo,
    dest: HsInfo,
    ca_pem: PathBuf,
    key: hyphae_edge::xmatrix::SigningKey,
    direct: Arc<FederationClient>,
    small: Arc<Vec<Req>>,
    put_mb: Vec<Req>,
    get_mb: Vec<Req>,
    table: Vec<(String, String)>,
    doc: Value,
    failed: Vec<String>,
}

fn bench(
    args: &Args,
    set: &Settings,
    bins: &Bins,
    dir: &Path,
    rt: &tokio::runtime::Runtime,
) -> Result<bool> {
    let machine = machine();
    println!("edgebench on {machine}");
    let (other, waited) = quiet(args.wait_quiet);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "  before start: other work {:.0} % of one vCPU (after waiting {waited:.0} s), \
         loadavg {}",
        other * 100.0,
        loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  edge {}, router {} (--driver {} --workers {}), stock {}",
        bins.edge.display(),
        bins.router.display(),
        args.driver,
        args.workers,
        bins.stock
            .as_deref()
            .map_or_else(|| "none".to_owned(), |p| p.display().to_string())
    );

    // The fake homeservers: A is the origin (edge A delivers to it), B the destination.
    let ca = TestCa::generate("edgebench CA")?;
    let ca_pem = dir.join("test-ca.pem");
    std::fs::write(&ca_pem, ca.cert_pem())?;
    let leaf = ca.leaf(&["localhost", "127.0.0.1"])?;
    let (pa, pb) = (free_port()?, free_port()?);
    let (hs_a, hs_b) = rt.block_on(async {
        let a = FakeHomeserver::start(
            &format!("localhost:{pa}"),
            leaf.clone(),
            SocketAddr::from(([127, 0, 0, 1], pa)),
        )
        .await?;
        let b = FakeHomeserver::start(
            &format!("localhost:{pb}"),
            leaf,
            SocketAddr::from(([127, 0, 0, 1], pb)),
        )
        .await?;
        anyhow::Ok((a, b))
    })?;
    hs_b.trust(hs_a.name(), hs_a.key_id(), hs_a.public_key());
    let origin = HsInfo {
        name: hs_a.name().to_owned(),
        addr: hs_a.addr(),
    };
    let dest = HsInfo {
        name: hs_b.name().to_owned(),
        addr: hs_b.addr(),
    };
    let key = hs_a.signing_key().clone();
    let direct = Arc::new(
        FederationClient::direct(&origin.name, key.clone(), &[&ca.cert_pem()], dest.addr)?
            .with_timeout(Duration::from_secs(60)),
    );
    let ctx = Arc::new(Ctx {
        dest: dest.name.clone(),
        set: set.clone(),
        errors: Errors::default(),
    });

    // Requests, signed once: small transactions, 1 MB transactions, 1 MB downloads.
    let small: Arc<Vec<Req>> = Arc::new(
        (0..set.pool as u64)
            .map(|i| {
                Req::new(
                    &direct,
                    &ctx.dest,
                    "PUT",
                    format!("{SMALL_TARGET}{}", 1_000_000 + i),
                    Some(transaction(&origin.name, i, 1024)),
                    None,
                )
            })
            .collect::<Result<_>>()?,
    );
    let put_mb: Vec<Req> = (0..4u64)
        .map(|i| {
            Req::new(
                &direct,
                &ctx.dest,
                "PUT",
                format!("{SMALL_TARGET}{}", 9_000_000 + i),
                Some(transaction(&origin.name, i, MB as usize)),
                None,
            )
        })
        .collect::<Result<_>>()?;
    let get_mb = vec![Req::new(
        &direct,
        &ctx.dest,
        "GET",
        format!("{}?size={MB}", testkit::BIG_DOWNLOAD_PATH),
        None,
        Some(MB as usize),
    )?];
    println!(
        "  small /send body {} B, 1 MB /send body {} B; {} pre-signed small transactions{}",
        small[0].body_len(),
        put_mb[0].body_len(),
        small.len(),
        if set.sign_each {
            " (unused: --sign-each)"
        } else {
            ""
        }
    );
    let doc = json!({
        "machine": machine,
        "other_work_before_start_vcpus": other,
        "loadavg_before_start": loadavg.trim(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "settings": {"rounds": set.rounds, "round_seconds": set.round_seconds,
            "seconds": set.seconds, "tput_rounds": set.tput_rounds,
            "concurrency": set.concurrency, "big_bytes": set.big,
            "sign_each": set.sign_each, "driver": args.driver, "workers": args.workers},
    });
    let mut run = Run {
        args,
        set,
        bins,
        dir,
        rt,
        ctx,
        origin,
        dest,
        ca_pem,
        key,
        direct,
        small,
        put_mb,
        get_mb,
        table: Vec::new(),
        doc,
        failed: Vec::new(),
    };
    if !args.stock_only {
        run.hyphae_mode()?;
    }
    match &bins.stock {
        Some(stock) => run.stock_mode(stock)?,
        None => run.table.push((
            "stock router B".into(),
            "not run (no --stock PATH or HYPHAE_STOCK_MYCELIUM)".into(),
        )),
    }
    drop((hs_a, hs_b));
    run.report()
}

impl Run<'_> {
    /// A world, with the client that goes through its edge A, warmed up.
    fn world(&self, stock: Option<&Path>) -> Result<(World, Clients)> {
        let sub = if stock.is_some() { "stock" } else { "hyphae" };
        let mut world = World::start(
            self.bins,
            self.args,
            &self.dir.join(sub),
            stock,
            &self.origin,
            &self.dest,
            &self.ca_pem,
        )?;
        println!("  {}", world.describe());
        let relayed = Arc::new(
            FederationClient::via_proxy(
                &self.origin.name,
                self.key.clone(),
                &[&world.edge_a_ca],
                world.edge_a_proxy,
            )?
            .with_timeout(Duration::from_secs(60)),
        );
        if let Err(e) = self
            .rt
            .block_on(warm_up(&self.ctx, &relayed, &self.small[0]))
        {
            world.check()?;
            return Err(e);
        }
        let clients = Clients {
            relayed,
            direct: self.direct.clone(),
        };
        Ok((world, clients))
    }

    /// Runs 1 to 4 through two hyphae routers.
    fn hyphae_mode(&mut self) -> Result<()> {
        let (mut world, paths) = self.world(None)?;
        let pids = world.pids();
        let set = self.set;

        // 1. The big response, first, while the edges are fresh.
        println!("big response ({} MB) through the edges ...", set.big / MB);
        let big = self
            .rt
            .block_on(big_response(&self.ctx, &paths.relayed, &world));
        let mut big_rows = Vec::new();
        for (label, rss0, growth, reset) in &big.edges {
            if *growth > set.rss_limit {
                self.failed.push(format!(
                    "{label}'s RSS grew {:.1} MB (> {} MB)",
                    *growth as f64 / MB as f64,
                    set.rss_limit / MB
                ));
            }
            big_rows.push(format!(
                "{label} +{:.1} MB (from {:.1} MB{})",
                *growth as f64 / MB as f64,
                *rss0 as f64 / MB as f64,
                if *reset { "" } else { ", sampled every 5 ms" }
            ));
        }
        let big_ok = big.ok && big.edges.iter().all(|e| e.2 <= set.rss_limit);
        self.table.push((
            format!("{} MB response, relayed", set.big / MB),
            format!(
                "{} bytes in {:.2} s ({:.0} MB/s), content {}; peak RSS growth {}; \
                 limit {} MB: {}",
                big.bytes,
                big.secs,
                big.bytes as f64 / MB as f64 / big.secs,
                if big.ok { "checked" } else { "WRONG" },
                big_rows.join(", "),
                set.rss_limit / MB,
                if big_ok { "met" } else { "NOT MET" }
            ),
        ));
        self.doc["big_response"] = json!({"bytes": big.bytes, "expected": set.big,
            "seconds": big.secs, "ok": big.ok, "rss_limit_bytes": set.rss_limit,
            "edges": big.edges.iter().map(|(l, r, g, reset)| json!({"edge": l, "rss_before": r,
                "peak_growth": g, "peak_reset": reset})).collect::<Vec<_>>()});
        world.check()?;

        // 2. Latency, small requests, one at a time.
        println!(
            "latency: {} rounds x {} s per path, small /send, 1 in flight ...",
            set.rounds, set.round_seconds
        );
        let (lr, ld, dist) = self.rt.block_on(latency_rounds(
            &self.ctx,
            &paths,
            &self.small,
            set.rounds,
            set.round_seconds,
            &pids,
        ));
        let added = Added::of(&lr.round_p50_us, &ld.round_p50_us);
        lat_rows(
            &mut self.table,
            "small /send, 1 in flight",
            &lr,
            &ld,
            &added,
            dist,
        );
        let goal = if set.quick {
            "not judged (--quick)".to_owned()
        } else {
            latency_goal(&added)
        };
        self.table.push((
            "goal: relayed p50 within 1 ms of direct".into(),
            goal.clone(),
        ));
        self.doc["latency_small"] = json!({"relayed": lr.json(), "direct": ld.json(),
            "added_p50": added.json(), "goal": goal, "disturbance": dist.json()});
        world.check()?;

        // 3. Throughput, small requests, many in flight.
        println!(
            "throughput: {} runs x {} s per path, {} in flight ...",
            set.tput_rounds, set.seconds, set.concurrency
        );
        let (tr, td, tdist) =
            self.rt
                .block_on(throughput_rounds(&self.ctx, &paths, &self.small, &pids));
        let c = set.concurrency;
        self.table.push((
            format!("relayed small /send, {c} in flight"),
            format!("{}{}", tr.text(), tdist.text()),
        ));
        self.table
            .push((format!("direct small /send, {c} in flight"), td.text()));
        self.table.push((
            "CPU per relayed request (us)".into(),
            cpu_text(&tr.cpu, tr.requests),
        ));
        self.table.push((
            "CPU per direct request (us)".into(),
            cpu_text(&td.cpu, td.requests),
        ));
        let tgoal = if set.quick {
            "not judged (--quick)".to_owned()
        } else if tr.median() >= 20_000.0 {
            format!("met ({:.0} req/s)", tr.median())
        } else {
            format!("NOT met: {:.0} req/s", tr.median())
        };
        self.table
            .push(("goal: 20,000 relayed small req/s".into(), tgoal.clone()));
        self.doc["throughput_small"] = json!({"relayed": tr.json(), "direct": td.json(),
            "concurrency": c, "goal": tgoal, "disturbance": tdist.json()});
        world.check()?;

        // 4. 1 MB bodies, both directions.
        let mb_rounds = (set.rounds / 2).max(2);
        println!(
            "1 MB bodies: {mb_rounds} rounds x {} s per path ...",
            set.round_seconds
        );
        let mut mb_doc = serde_json::Map::new();
        for (what, reqs) in [
            ("1 MB /send PUT", &self.put_mb),
            ("1 MB download", &self.get_mb),
        ] {
            let (r, d, dist) = self.rt.block_on(latency_rounds(
                &self.ctx,
                &paths,
                reqs,
                mb_rounds,
                set.round_seconds,
                &pids,
            ));
            let added = Added::of(&r.round_p50_us, &d.round_p50_us);
            lat_rows(&mut self.table, what, &r, &d, &added, dist);
            self.table.push((
                format!("{what}: MB/s, 1 in flight"),
                format!(
                    "relayed {:.0} MB/s, direct {:.0} MB/s",
                    r.mb_per_s(),
                    d.mb_per_s()
                ),
            ));
            let mut rj = r.json();
            rj["mb_per_s"] = json!(r.mb_per_s());
            let mut dj = d.json();
            dj["mb_per_s"] = json!(d.mb_per_s());
            mb_doc.insert(
                what.into(),
                json!({"relayed": rj, "direct": dj, "added_p50": added.json(),
                       "disturbance": dist.json()}),
            );
        }
        self.doc["one_mb"] = Value::Object(mb_doc);
        world.check()
    }

    /// 5. Router B replaced by stock mycelium, edge B on its HTTP message API: small-request
    ///    latency and throughput.
    fn stock_mode(&mut self, stock: &Path) -> Result<()> {
        println!("stock mode: router B is {} ...", stock.display());
        let (mut world, paths) = self.world(Some(stock))?;
        let pids = world.pids();
        let set = self.set;
        let (lr, ld, dist) = self.rt.block_on(latency_rounds(
            &self.ctx,
            &paths,
            &self.small,
            set.rounds,
            set.round_seconds,
            &pids,
        ));
        let added = Added::of(&lr.round_p50_us, &ld.round_p50_us);
        lat_rows(
            &mut self.table,
            "stock router B: small /send, 1 in flight",
            &lr,
            &ld,
            &added,
            dist,
        );
        world.check()?;
        let (tr, td, tdist) =
            self.rt
                .block_on(throughput_rounds(&self.ctx, &paths, &self.small, &pids));
        let c = set.concurrency;
        self.table.push((
            format!("stock router B: relayed small /send, {c} in flight"),
            format!("{}{}", tr.text(), tdist.text()),
        ));
        self.table.push((
            format!("stock router B: direct small /send, {c} in flight"),
            td.text(),
        ));
        self.table.push((
            "stock router B: CPU per relayed request (us)".into(),
            cpu_text(&tr.cpu, tr.requests),
        ));
        self.doc["stock"] = json!({"binary": stock.display().to_string(),
            "latency_small": {"relayed": lr.json(), "direct": ld.json(),
                              "added_p50": added.json(), "disturbance": dist.json()},
            "throughput_small": {"relayed": tr.json(), "direct": td.json(), "concurrency": c,
                                 "disturbance": tdist.json()}});
        world.check()
    }

    /// Prints the table, writes the JSON; whether every check passed.
    fn report(mut self) -> Result<bool> {
        let errors = self.ctx.errors.count();
        if errors > 0 {
            let first = self
                .ctx
                .errors
                .first
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .join("\n    ");
            self.failed.push(format!(
                "{errors} requests were not answered 200 with the right body; first:\n    {first}"
            ));
        }
        self.doc["errors"] = json!(errors);
        self.doc["failed"] = json!(self.failed);
        println!();
        let width = self.table.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &self.table {
            println!("{k:<width$}  {v}");
        }
        self.doc["table"] = Value::Array(
            self.table
                .iter()
                .map(|(k, v)| json!({"what": k, "figure": v}))
                .collect(),
        );
        if let Some(path) = &self.args.json {
            std::fs::write(path, serde_json::to_string_pretty(&self.doc)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if self.failed.is_empty() {
            println!("\nall responses 200 with the right bodies; every check passed");
            Ok(true)
        } else {
            for f in &self.failed {
                eprintln!("edgebench: FAILED: {f}");
            }
            Ok(false)
        }
    }
}

/// Sends small requests through the edges until one is answered 200 (routes, sessions).
async fn warm_up(ctx: &Ctx, client: &FederationClient, r: &Req) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match send(client, &ctx.dest, r, ctx.set.sign_each).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                bail!("no relayed request got through in 30 s; last: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn lat_rows(
    table: &mut Vec<(String, String)>,
    what: &str,
    r: &PathLat,
    d: &PathLat,
    added: &Added,
    dist: Disturbance,
) {
    for (path, p) in [("relayed", r), ("direct", d)] {
        let (lo, hi) = min_max(&p.round_p50_us);
        table.push((
            format!("{what}: {path}"),
            format!(
                "p50 {:.1} us (rounds {lo:.1}..{hi:.1}), p99 {:.1} us, {} requests",
                us(p.h.value_at_quantile(0.5)),
                us(p.h.value_at_quantile(0.99)),
                p.h.len()
            ),
        ));
    }
    table.push((
        format!("{what}: relayed adds p50"),
        format!("{}{}", added.text(r.round_p50_us.len()), dist.text()),
    ));
}

fn latency_goal(a: &Added) -> String {
    if a.max <= 1000.0 {
        format!("met (every round within {:.1} us)", a.max.max(0.0))
    } else if a.median <= 1000.0 {
        format!(
            "met at the median ({:.1} us), not in every round (up to {:.1} us)",
            a.median, a.max
        )
    } else {
        format!("NOT met: +{:.1} us", a.median)
    }
}
