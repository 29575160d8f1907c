//! Network namespaces for TUN tests: each node runs in its own namespace (`ip netns exec`) with
//! its TUN device, namespaces are joined by veth pairs carrying ULA addresses (`fd00:<n>::/64`),
//! and the test talks to a node's admin API, pings, and moves TCP or UDP traffic from threads
//! that joined a namespace (`setns(2)` affects only the calling thread).
//!
//! Every namespace is named `hyt-<pid>-<seq>-<tag>`, so parallel tests and test processes never
//! clash; a namespace is deleted when the last [`Netns`] handle to it drops (nodes hold one, so
//! it outlives them), and the first namespace a process makes sweeps away those of test
//! processes that died. Nodes are killed when they drop and get `SIGKILL` when the thread that
//! started them dies. Needs root and iproute2 (`ip`), `ping` for [`Netns::ping`].
//!
//! Inside its namespace every node uses the same ports: peers on [`PEER_PORT`] (TCP and QUIC),
//! the admin API on [`API`], metrics on [`METRICS`], so nothing races for free ports.

#![cfg(target_os = "linux")]

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream,
};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Once, mpsc};
use std::time::{Duration, Instant};

use hyphae_wire::identity::{PublicKey, SecretKey};
use serde_json::Value;

use super::{http, wait_until};

/// Prefix of every namespace this harness makes: `hyt-<pid>-<seq>-<tag>`.
const PREFIX: &str = "hyt-";

/// The TCP and QUIC port every node listens on inside its namespace.
pub const PEER_PORT: u16 = 9651;
/// The admin API of every node, inside its namespace.
pub const API: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8989));
/// Stock mycelium's JSON-RPC address, inside its namespace.
pub const JSONRPC: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8990));
/// hyphae-router's metrics address (`--metrics-api-address`), inside its namespace.
pub const METRICS: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8991));

/// How long a node may take to create its TUN and answer on its API.
pub const READY: Duration = Duration::from_secs(15);

static NAMESPACES: AtomicU32 = AtomicU32::new(0);
static LINKS: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted when the last handle drops.
#[derive(Clone, Debug)]
pub struct Netns(Arc<NsName>);

#[derive(Debug)]
struct NsName(String);

impl Drop for NsName {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.0]) {
            eprintln!("netns harness: {e}");
        }
    }
}

impl Netns {
    /// A new namespace with its loopback up; `tag` (a few characters) names it in listings.
    pub fn new(tag: &str) -> Self {
        static SWEEP: Once = Once::new();
        SWEEP.call_once(sweep_leftovers);
        let seq = NAMESPACES.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{seq}-{tag}", std::process::id());
        if ip(&["netns", "add", &name]).is_err() {
            // Only a dead process with our pid can have left this name behind.
            let _ = ip(&["netns", "del", &name]);
            ip(&["netns", "add", &name]).unwrap_or_else(|e| panic!("{e}"));
        }
        let ns = Self(Arc::new(NsName(name)));
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.0.0
    }

    /// `ip -n <ns> args`: its standard output; panics with `ip`'s error if it fails.
    #[track_caller]
    pub fn ip(&self, args: &[&str]) -> String {
        self.try_ip(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `ip -n <ns> args`: its standard output, or the command and its error.
    pub fn try_ip(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", self.name()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ip -n <ns> -j args`, parsed.
    #[track_caller]
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        let out = self.ip(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j {args:?}: {e}: {out}"))
    }

    /// A command that runs `program` inside the namespace (`ip netns exec <ns> program`; `ip`
    /// execs it, so the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name()]).arg(program);
        c
    }

    /// Runs `program args` inside the namespace to its end.
    #[track_caller]
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {} {program}: {e}", self.name()))
    }

    /// Moves the calling thread into the namespace: sockets it opens from then on live there
    /// (they stay there when used from other threads). Only for threads the caller spawned and
    /// ends; [`Self::run`] does both.
    pub fn enter(&self) -> io::Result<()> {
        let path = format!("/var/run/netns/{}", self.name());
        let f = File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
        setns_net(&f).map_err(|e| io::Error::new(e.kind(), format!("setns {path}: {e}")))
    }

    /// Runs `f` on a new thread inside the namespace and returns its result; a panic in `f`
    /// goes on in the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                self.enter()
                    .unwrap_or_else(|e| panic!("entering {}: {e}", self.name()));
                f()
            });
            t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// `ping -6 -n <args> <dst>` inside the namespace (add e.g. `-c 3 -i 0.2 -W 2`).
    pub fn ping(&self, dst: Ipv6Addr, args: &[&str]) -> Ping {
        let dst = dst.to_string();
        let mut all = vec!["-6", "-n"];
        all.extend_from_slice(args);
        all.push(&dst);
        let out = self.exec("ping", &all);
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // "3 packets transmitted, 3 received, 0% packet loss, time 404ms"
        let count = |what: &str| -> u32 {
            output
                .lines()
                .find(|l| l.contains("packets transmitted"))
                .and_then(|l| {
                    l.split(',')
                        .find(|f| f.trim().ends_with(what))?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .unwrap_or(0)
        };
        Ping {
            ok: out.status.success(),
            transmitted: count("packets transmitted"),
            received: count("received"),
            output,
        }
    }
}

/// What one `ping` run printed.
#[derive(Clone, Debug)]
pub struct Ping {
    /// Exit status 0: at least one reply.
    pub ok: bool,
    pub transmitted: u32,
    pub received: u32,
    /// Standard output and error.
    pub output: String,
}

/// Deletes the namespaces and node directories of test processes that are gone (killed before
/// their `Drop` ran; their nodes died with them).
fn sweep_leftovers() {
    let gone = |name: &str| {
        name.strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| {
                pid != std::process::id() && !PathBuf::from(format!("/proc/{pid}")).exists()
            })
    };
    let names = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| gone(n))
            .collect()
    };
    for name in names("/var/run/netns".as_ref()) {
        let _ = ip(&["netns", "del", &name]);
    }
    let tmp = std::env::temp_dir();
    for name in names(&tmp) {
        let _ = std::fs::remove_dir_all(tmp.join(name));
    }
}

/// Runs iproute2's `ip args`: its standard output, or the command and its error.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[allow(unsafe_code)]
fn setns_net(ns: &File) -> io::Result<()> {
    // SAFETY: setns(2) takes a file descriptor, which `ns` keeps open for the call, and a
    // namespace type; it touches no memory of ours and changes only the calling thread's network
    // namespace.
    let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes `c`'s child get SIGKILL when the thread that spawns it exits (a test process killed
/// before its `Drop` ran leaves no node behind). `ip netns exec` execs the node, which keeps it.
#[allow(unsafe_code)]
fn die_with_parent(c: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: prctl(2) is a plain system call, and the error path only reads errno.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A veth pair between two namespaces: `a_dev` in the first with `a`, `b_dev` in the second
/// with `b`, both in `fd00:<n>::/64`, up.
#[derive(Clone, Debug)]
pub struct Veth {
    pub a: Ipv6Addr,
    pub b: Ipv6Addr,
    pub a_dev: String,
    pub b_dev: String,
}

impl Veth {
    /// The TCP peer endpoint of a node in the first namespace, as seen from the second.
    pub fn tcp_a(&self) -> String {
        format!("tcp://[{}]:{PEER_PORT}", self.a)
    }

    /// The TCP peer endpoint of a node in the second namespace, as seen from the first.
    pub fn tcp_b(&self) -> String {
        format!("tcp://[{}]:{PEER_PORT}", self.b)
    }
}

/// Joins namespaces `a` and `b` with a new veth pair (`fd00:<n>::1` in `a`, `::2` in `b`, no
/// duplicate address detection, so they are usable at once) and waits until both ends are up.
pub fn veth(a: &Netns, b: &Netns) -> Veth {
    let n = LINKS.fetch_add(1, Ordering::Relaxed) + 1;
    let link = Veth {
        a: format!("fd00:{n:x}::1").parse().unwrap(),
        b: format!("fd00:{n:x}::2").parse().unwrap(),
        a_dev: format!("veth{n}a"),
        b_dev: format!("veth{n}b"),
    };
    ip(&[
        "link",
        "add",
        &link.a_dev,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &link.b_dev,
        "netns",
        b.name(),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    for (ns, dev, addr) in [(a, &link.a_dev, link.a), (b, &link.b_dev, link.b)] {
        ns.ip(&["addr", "add", &format!("{addr}/64"), "dev", dev, "nodad"]);
        ns.ip(&["link", "set", dev, "up"]);
    }
    for (ns, dev) in [(a, &link.a_dev), (b, &link.b_dev)] {
        wait_until(Duration::from_secs(5), || {
            ns.ip_json(&["link", "show", "dev", dev])[0]["operstate"] == "UP"
        })
        .unwrap_or_else(|| panic!("{dev} in {} does not come up", ns.name()));
    }
    link
}

/// Which router a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// hyphae-router from this workspace, on the portable driver.
    Hyphae,
    /// The same on the io_uring driver (`--driver uring`: links and TUN queue on its ring).
    HyphaeUring,
    /// Stock mycelium 0.7.10 (`hyphae_test_support::stock_mycelium`).
    Stock,
}

impl Kind {
    /// hyphae-router, whichever driver.
    pub fn is_hyphae(self) -> bool {
        matches!(self, Self::Hyphae | Self::HyphaeUring)
    }
}

/// The overlay identity of the node whose key is `[seed; 32]` (the key file [`NsNode`] writes).
pub fn identity(seed: u8) -> PublicKey {
    SecretKey::from_bytes([seed; 32]).public_key()
}

/// A router running in a namespace with its TUN device.
#[derive(Debug)]
pub struct NsNode {
    pub name: String,
    pub kind: Kind,
    pub ns: Netns,
    /// The TUN device's name.
    pub tun: String,
    pub child: Child,
    pub dir: PathBuf,
    pub public: PublicKey,
    /// The overlay address (on the TUN, with prefix length 7).
    pub address: Ipv6Addr,
    /// The node's /64 as the admin API writes it (`5d4:5b18:80f8:1108::/64`).
    pub subnet: String,
}

impl NsNode {
    /// Starts a `kind` node in `ns` with the key `[seed; 32]`, TUN `tun`, TCP peers `peers`,
    /// and waits until its TUN holds its address and its API answers with that address.
    #[track_caller]
    pub fn start(
        ns: &Netns,
        kind: Kind,
        name: &str,
        seed: u8,
        tun: &str,
        peers: &[String],
    ) -> Self {
        let n = Self::spawn(ns, kind, name, seed, tun, peers);
        n.wait_ready();
        n
    }

    /// Starts the node like [`Self::start`] without waiting for anything.
    pub fn spawn(
        ns: &Netns,
        kind: Kind,
        name: &str,
        seed: u8,
        tun: &str,
        peers: &[String],
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("{}-{name}", ns.name()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let key = dir.join("key.bin");
        std::fs::write(&key, [seed; 32]).unwrap();
        let key = key.to_str().unwrap().to_owned();
        let port = PEER_PORT.to_string();
        let mut c = match kind {
            Kind::Hyphae | Kind::HyphaeUring => {
                let driver = if kind == Kind::HyphaeUring {
                    "uring"
                } else {
                    "portable"
                };
                let mut c = ns.command(env!("CARGO_BIN_EXE_hyphae-router"));
                c.args(["-k", &key, "-t", &port, "-q", &port])
                    .args(["--api-addr", &API.to_string()])
                    .args(["--metrics-api-address", &METRICS.to_string()])
                    .args(["--disable-peer-discovery", "--tun-name", tun])
                    .args(["--workers", "2", "--driver", driver])
                    .args(["--local-socket", dir.join("router.sock").to_str().unwrap()]);
                if !peers.is_empty() {
                    c.arg("--peers").args(peers);
                }
                c
            }
            Kind::Stock => {
                let config = dir.join("config.toml");
                let list: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
                std::fs::write(&config, format!("peers = [{}]\n", list.join(", "))).unwrap();
                let mut c = ns.command(hyphae_test_support::stock_mycelium());
                c.args(["-k", &key, "-c", config.to_str().unwrap()])
                    .args(["--tun-name", tun, "--disable-peer-discovery"])
                    .args(["-t", &port, "-q", &port])
                    .args(["--api-addr", &API.to_string()])
                    .args(["--jsonrpc-addr", &JSONRPC.to_string()]);
                c
            }
        };
        let stdout = File::create(dir.join("stdout")).unwrap();
        let stderr = File::create(dir.join("stderr")).unwrap();
        c.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        die_with_parent(&mut c);
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({kind:?}): {e}"));
        let public = identity(seed);
        Self {
            name: name.to_owned(),
            kind,
            ns: ns.clone(),
            tun: tun.to_owned(),
            child,
            dir,
            public,
            address: public.address(),
            subnet: public.subnet().to_string(),
        }
    }

    /// Waits until the TUN holds the node's address with prefix length 7 and the admin API
    /// answers with that address; panics with the log if the node exits or [`READY`] passes.
    #[track_caller]
    pub fn wait_ready(&self) {
        let ready = wait_until(READY, || {
            if self.exited() {
                return Some(false);
            }
            let on_tun = self
                .tun_addresses()
                .contains(&(self.address, 7, "global".to_owned()));
            (on_tun && self.api("/api/v1/admin").is_some()).then_some(true)
        });
        match ready {
            Some(true) => {}
            Some(false) => panic!("{} exited while starting:\n{}", self.name, self.log()),
            None => panic!(
                "{}: no TUN {} with {}/7 and an answering API within {READY:?}:\n{}\n{}",
                self.name,
                self.tun,
                self.address,
                self.ns.try_ip(&["addr"]).unwrap_or_else(|e| e),
                self.log()
            ),
        }
        let info = self.info();
        assert_eq!(
            info["nodeIp"].as_str(),
            Some(self.address.to_string().as_str()),
            "{}: the API's nodeIp is the address of its key: {info}",
            self.name
        );
        assert_eq!(
            info["nodeSubnet"].as_str(),
            Some(self.subnet.as_str()),
            "{}: {info}",
            self.name
        );
    }

    /// Whether the process has exited.
    pub fn exited(&self) -> bool {
        // try_wait needs &mut; /proc tells without reaping: a zombie or no process at all.
        match std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())) {
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "Z" || state == "X"),
            Err(_) => true,
        }
    }

    /// GET `path` on the admin API (from inside the namespace): status and body.
    pub fn api(&self, path: &str) -> Option<(u16, String)> {
        self.ns.run(|| http(API, "GET", path, None))
    }

    /// GET `path` on the admin API, which must answer 200 with JSON.
    #[track_caller]
    pub fn get(&self, path: &str) -> Value {
        let (status, body) = self
            .api(path)
            .unwrap_or_else(|| panic!("{}: the API answers GET {path}", self.name));
        assert_eq!(status, 200, "{}: GET {path}: {body}", self.name);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    pub fn info(&self) -> Value {
        self.get("/api/v1/admin")
    }

    /// The subnets of the selected routes.
    pub fn routes(&self) -> Vec<String> {
        self.get("/api/v1/admin/routes/selected")
            .as_array()
            .unwrap_or_else(|| panic!("{}: routes are a list", self.name))
            .iter()
            .filter_map(|r| r["subnet"].as_str().map(str::to_owned))
            .collect()
    }

    pub fn has_route(&self, subnet: &str) -> bool {
        self.routes().iter().any(|s| s == subnet)
    }

    /// The Prometheus page (`/metrics` on [`METRICS`], else on [`API`]).
    pub fn metrics(&self) -> Option<String> {
        self.ns.run(|| {
            [METRICS, API]
                .into_iter()
                .find_map(|a| match http(a, "GET", "/metrics", None) {
                    Some((200, body)) => Some(body),
                    _ => None,
                })
        })
    }

    /// The sum of metric `name` over all its labels (e.g. every worker); `None` when the page
    /// or the metric is missing.
    pub fn metric_sum(&self, name: &str) -> Option<u64> {
        let page = self.metrics()?;
        let mut found = false;
        let mut sum = 0u64;
        for line in page.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if series.split('{').next() == Some(name) {
                found = true;
                sum += value.trim().parse::<f64>().ok()? as u64;
            }
        }
        found.then_some(sum)
    }

    /// `ip -d link show dev <tun>`, parsed; `None` when there is no such device.
    pub fn tun_link(&self) -> Option<Value> {
        let out = self
            .ns
            .try_ip(&["-j", "-d", "link", "show", "dev", &self.tun])
            .ok()?;
        let v: Value = serde_json::from_str(&out).ok()?;
        v.get(0).cloned()
    }

    /// Whether the TUN device exists in the namespace.
    pub fn tun_exists(&self) -> bool {
        self.ns.try_ip(&["link", "show", "dev", &self.tun]).is_ok()
    }

    /// The IPv6 addresses on the TUN: address, prefix length, scope.
    pub fn tun_addresses(&self) -> Vec<(Ipv6Addr, u8, String)> {
        let Ok(out) = self
            .ns
            .try_ip(&["-j", "-6", "addr", "show", "dev", &self.tun])
        else {
            return Vec::new();
        };
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        v.get(0)
            .and_then(|l| l["addr_info"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some((
                    a["local"].as_str()?.parse().ok()?,
                    u8::try_from(a["prefixlen"].as_u64()?).ok()?,
                    a["scope"].as_str()?.to_owned(),
                ))
            })
            .collect()
    }

    /// `ping` from this node's namespace.
    pub fn ping(&self, dst: Ipv6Addr, args: &[&str]) -> Ping {
        self.ns.ping(dst, args)
    }

    /// Standard output then standard error.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "--- stdout of {0} ---\n{1}--- stderr of {0} ---\n{2}",
            self.name,
            read("stdout"),
            read("stderr")
        )
    }

    /// Standard error alone, escape sequences removed.
    pub fn stderr(&self) -> String {
        strip_ansi(&std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default())
    }

    /// The error lines on either stream (escape sequences removed): lines logged at level
    /// ERROR and, for hyphae, the `hyphae-router: <error>` line its `main` prints before exiting
    /// with status 1. (Stock's `main` ends with a second line, `Error: <error as Debug>`, which
    /// this leaves out: stock's ERROR log line is the one that names the device.)
    pub fn error_lines(&self) -> Vec<String> {
        let read =
            |f: &str| strip_ansi(&std::fs::read_to_string(self.dir.join(f)).unwrap_or_default());
        let is_error = |l: &&str| {
            l.split_whitespace().any(|w| w == "ERROR")
                || (self.kind.is_hyphae() && l.starts_with("hyphae-router: "))
        };
        [read("stdout"), read("stderr")]
            .iter()
            .flat_map(|s| s.lines().filter(is_error).map(str::to_owned))
            .collect()
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("waitpid") {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits (10 s at most) for the exit.
    #[track_caller]
    pub fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM to {}", self.name);
        self.wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{} did not exit on SIGTERM:\n{}", self.name, self.log()))
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (0x40..=0x7e).
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `len` pseudo-random bytes from `seed` (xorshift64*), the same for the same arguments.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sends `len` bytes of [`pattern`] over TCP from `from`'s namespace to a listener on `to`'s
/// overlay address in `to`'s namespace, which checks every byte, the length and that the
/// connection came from `from`'s overlay address, then acknowledges. Connecting is retried
/// until `limit` (the route may still be on its way). `Err` says what went wrong on which side.
pub fn tcp_transfer(from: &NsNode, to: &NsNode, len: usize, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let left = || deadline.saturating_duration_since(Instant::now());
    let data = pattern(len, u64::from(from.public.as_bytes()[0]) << 8 | 0x5a);
    let (port_tx, port_rx) = mpsc::channel::<u16>();
    std::thread::scope(|s| {
        let server = s.spawn(|| -> Result<(), String> {
            to.ns.enter().map_err(|e| e.to_string())?;
            let l = TcpListener::bind((to.address, 0)).map_err(|e| format!("bind: {e}"))?;
            port_tx
                .send(l.local_addr().map_err(|e| e.to_string())?.port())
                .map_err(|e| e.to_string())?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            let (mut c, peer) = loop {
                match l.accept() {
                    Ok(c) => break c,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && !left().is_zero() => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            };
            if peer.ip() != IpAddr::V6(from.address) {
                return Err(format!("connection from {peer}, not {}", from.address));
            }
            c.set_nonblocking(false).map_err(|e| e.to_string())?;
            let mut got = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if left().is_zero() {
                    return Err(format!("timed out after {got} of {len} bytes"));
                }
                c.set_read_timeout(Some(left().max(Duration::from_millis(1))))
                    .map_err(|e| e.to_string())?;
                let n = c
                    .read(&mut buf)
                    .map_err(|e| format!("read after {got} of {len} bytes: {e}"))?;
                if n == 0 {
                    break;
                }
                let end = got + n;
                if end > len {
                    return Err(format!("{end} bytes, more than the {len} sent"));
                }
                if let Some(i) = (0..n).find(|&i| buf[i] != data[got + i]) {
                    return Err(format!("byte {} differs", got + i));
                }
                got = end;
            }
            if got != len {
                return Err(format!("{got} of {len} bytes, then EOF"));
            }
            c.write_all(b"OK")
                .map_err(|e| format!("acknowledging: {e}"))?;
            Ok(())
        });
        let client = s.spawn(|| -> Result<(), String> {
            let port_rx = port_rx; // moved in: a Receiver is not Sync
            from.ns.enter().map_err(|e| e.to_string())?;
            let port = port_rx
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| "no listener".to_owned())?;
            let dst = SocketAddr::from((to.address, port));
            let mut c = loop {
                let wait = left().min(Duration::from_secs(3));
                match TcpStream::connect_timeout(&dst, wait.max(Duration::from_millis(1))) {
                    Ok(c) => break c,
                    Err(e) if left().is_zero() => return Err(format!("connect {dst}: {e}")),
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            };
            c.set_write_timeout(Some(left().max(Duration::from_millis(1))))
                .map_err(|e| e.to_string())?;
            c.write_all(&data).map_err(|e| format!("write: {e}"))?;
            c.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(left().max(Duration::from_millis(1))))
                .map_err(|e| e.to_string())?;
            let mut ack = Vec::new();
            c.read_to_end(&mut ack)
                .map_err(|e| format!("reading the acknowledgement: {e}"))?;
            if ack != b"OK" {
                return Err(format!(
                    "acknowledgement {:?}",
                    String::from_utf8_lossy(&ack)
                ));
            }
            Ok(())
        });
        let server = server
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let client = client
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        match (server, client) {
            (Ok(()), Ok(())) => Ok(()),
            (s, c) => Err(format!(
                "{} -> {} over TCP: receiver: {s:?}, sender: {c:?}",
                from.name, to.name
            )),
        }
    })
}
