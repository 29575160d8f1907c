//! The processes under test (a hyphae router, a stock mycelium node, the plain relay), where
//! threads and processes run (CPU affinity), and what they cost (`/proc` CPU times).
//!
//! Every child is killed and reaped when its handle drops, and gets SIGKILL if this process
//! dies first (`PR_SET_PDEATHSIG`). Every wait for a child has a deadline, and a child that
//! fails to come up is reported with the end of its log.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hyphae_bench::{free_port, router_args};

/// How long a router may take to open its API port.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A router under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Hyphae,
    /// hyphae on the other driver (`--vs-driver`).
    HyphaeVs,
    /// Stock mycelium 0.7.10.
    Stock,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Hyphae => "hyphae",
            Self::HyphaeVs => "hyphae-vs",
            Self::Stock => "stock",
        }
    }
}

/// How to start the routers: binaries and flags.
#[derive(Debug)]
pub(crate) struct Launch {
    pub(crate) hyphae: PathBuf,
    pub(crate) stock: Option<PathBuf>,
    pub(crate) relay: PathBuf,
    pub(crate) driver: String,
    /// The driver of [`Kind::HyphaeVs`].
    pub(crate) vs_driver: Option<String>,
    pub(crate) workers: usize,
    pub(crate) rcvbuf: Option<usize>,
    /// Where routers keep their keys, configs and logs (one subdirectory per start).
    pub(crate) dir: PathBuf,
}

/// A running router: hyphae or stock mycelium, listening for TCP peers on `port`.
#[derive(Debug)]
pub(crate) struct Router {
    child: Reaped,
    pub(crate) kind: Kind,
    pub(crate) port: u16,
}

impl Router {
    /// Starts a router of `kind` (on `cpu` if given) and waits until every TCP port it binds
    /// answers. Ports are found free and then given to the router, so another process can take
    /// one in between (stock then panics binding it, possibly after its API is up): a start
    /// that fails with "Address already in use" is tried again on new ports, up to 5 times.
    pub(crate) fn start(launch: &Launch, kind: Kind, cpu: Option<usize>) -> Result<Self> {
        let mut last = None;
        for _attempt in 0..5 {
            match Self::start_once(launch, kind, cpu) {
                Ok(r) => return Ok(r),
                Err(e) if format!("{e:#}").contains("Address already in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no start attempted")))
    }

    fn start_once(launch: &Launch, kind: Kind, cpu: Option<usize>) -> Result<Self> {
        let dir = fresh_dir(&launch.dir, kind.name())?;
        let (port, api) = (free_port()?, free_port()?);
        let mut cmd;
        // The TCP ports the router listens on, all of which must answer before it is up.
        let mut listens = vec![port, api];
        match kind {
            Kind::Hyphae | Kind::HyphaeVs => {
                let key = dir.join("key");
                std::fs::write(&key, [0x77u8; 32])?;
                cmd = pinned_command(&launch.hyphae, cpu);
                let driver = match (kind, &launch.vs_driver) {
                    (Kind::HyphaeVs, Some(d)) => d,
                    _ => &launch.driver,
                };
                router_args(&mut cmd, &key, port, api, driver, launch.workers);
                if let Some(n) = launch.rcvbuf {
                    cmd.args(["--tcp-rcvbuf", &n.to_string()]);
                }
            }
            Kind::Stock => {
                let Some(bin) = &launch.stock else {
                    bail!("no stock mycelium binary");
                };
                // Flags as in ../shared/bin/README.md; an empty config, or it reads the
                // system's. QUIC listens on its own port but no peer uses it.
                let cfg = dir.join("mycelium.toml");
                std::fs::write(&cfg, "peers = []\n")?;
                let (quic, rpc) = (free_port()?, free_port()?);
                listens.push(rpc);
                cmd = pinned_command(bin, cpu);
                cmd.current_dir(&dir)
                    .arg("-k")
                    .arg(dir.join("priv_key.bin"))
                    .arg("-c")
                    .arg(&cfg)
                    .args(["--no-tun", "--disable-peer-discovery", "--silent"])
                    .args(["-t", &port.to_string(), "-q", &quic.to_string()])
                    .args(["--api-addr", &format!("127.0.0.1:{api}")])
                    .args(["--jsonrpc-addr", &format!("127.0.0.1:{rpc}")]);
            }
        }
        let label = format!("{} router", kind.name());
        let mut child = Reaped::spawn(&label, &mut cmd, dir.join("log"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        for p in listens {
            while TcpStream::connect(("127.0.0.1", p)).is_err() {
                child.check()?;
                if Instant::now() > deadline {
                    bail!(
                        "{label} did not open its port 127.0.0.1:{p} within {} s{}",
                        START_TIMEOUT.as_secs(),
                        child.log_tail()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // A bind that failed after the others (stock's JSON-RPC server) ends the process.
        std::thread::sleep(Duration::from_millis(50));
        child.check()?;
        Ok(Self { child, kind, port })
    }

    /// User plus system CPU seconds the router has used, all threads.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        hyphae_bench::sys::cpu_seconds(self.child.child.id()).unwrap_or(0.0)
    }

    /// An error, with the end of its log, when the router has exited.
    pub(crate) fn check(&mut self) -> Result<()> {
        self.child.check()
    }
}

/// Starts the plain relay (on `cpu` if given) towards loopback port `to`; returns it and the
/// port it listens on.
pub(crate) fn start_relay(launch: &Launch, cpu: Option<usize>, to: u16) -> Result<(Reaped, u16)> {
    let dir = fresh_dir(&launch.dir, "relay")?;
    let port_file = dir.join("port");
    let mut cmd = pinned_command(&launch.relay, cpu);
    cmd.args(["--to", &to.to_string()]);
    // The relay prints its port on stdout, which goes to the log; read it from there.
    let mut child = Reaped::spawn("plain relay", &mut cmd, port_file.clone())?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&port_file).unwrap_or_default();
        if let Some(line) = text.lines().next().filter(|_| text.contains('\n')) {
            let port = line
                .trim()
                .parse()
                .with_context(|| format!("the relay printed {line:?}, not its port"))?;
            return Ok((child, port));
        }
        child.check()?;
        if Instant::now() > deadline {
            bail!(
                "the plain relay ({}) did not print its port within {} s",
                launch.relay.display(),
                START_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A new, empty subdirectory of `parent` named after `what`.
fn fresh_dir(parent: &Path, what: &str) -> Result<PathBuf> {
    for n in 1.. {
        let dir = parent.join(format!("{what}-{n}"));
        if !dir.exists() {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            return Ok(dir);
        }
    }
    unreachable!("an unbounded range ends")
}

/// A child process with its output in a log file; killed and reaped when dropped.
#[derive(Debug)]
pub(crate) struct Reaped {
    child: Child,
    label: String,
    log: PathBuf,
}

impl Reaped {
    /// Starts `cmd` with stdout and stderr to `log`. Call from the main thread only: the child
    /// gets SIGKILL when the thread that started it ends (`PR_SET_PDEATHSIG`).
    fn spawn(label: &str, cmd: &mut Command, log: PathBuf) -> Result<Self> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        hyphae_bench::sys::die_with_parent(cmd);
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting the {label} ({}; build it with cargo build --release -p hyphae-router \
                 -p hyphae-bench --bins)",
                cmd.get_program().display()
            )
        })?;
        Ok(Self {
            child,
            label: label.to_owned(),
            log,
        })
    }

    /// An error, with the end of the log, when the child has exited.
    fn check(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("the {} exited ({status}){}", self.label, self.log_tail()),
        }
    }

    /// The last lines of the child's log, as a suffix for an error message.
    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n    ");
        if tail.is_empty() {
            format!("; its log {} is empty", self.log.display())
        } else {
            format!("; the end of its log {}:\n    {tail}", self.log.display())
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command, run under `taskset` when it is to be pinned.
fn pinned_command(bin: &Path, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// The first line `bin ARGS` prints on stdout within five seconds (`None` if it fails, prints
/// nothing or takes longer; it is killed then).
pub(crate) fn first_line_of(bin: &Path, args: &[&str]) -> Option<String> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    let line = out.lines().next()?.trim().to_owned();
    (status.success() && !line.is_empty()).then_some(line)
}

/// The CPU mask the process started with.
static ALLOWED: std::sync::OnceLock<libc::cpu_set_t> = std::sync::OnceLock::new();

/// The CPU mask the process started with (read on the first call, before any pinning).
fn allowed() -> Result<libc::cpu_set_t> {
    if let Some(set) = ALLOWED.get() {
        return Ok(*set);
    }
    // SAFETY: cpu_set_t is a plain bit array, valid when zeroed.
    #[allow(unsafe_code)]
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most `size_of::<cpu_set_t>()` bytes into `set`.
    #[allow(unsafe_code)]
    let r = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(*ALLOWED.get_or_init(|| set))
}

/// The CPUs in the mask the process started with, in order.
pub(crate) fn allowed_cpus() -> Result<Vec<usize>> {
    let set = allowed()?;
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads one bit inside `set`, for indices below CPU_SETSIZE.
        .filter(|&c| {
            #[allow(unsafe_code)]
            unsafe {
                libc::CPU_ISSET(c, &set)
            }
        })
        .collect())
}

/// Pins this thread, and every thread it starts later, to `cpu`, or gives it back the mask the
/// process started with.
pub(crate) fn set_affinity(cpu: Option<usize>) -> Result<()> {
    let set = match cpu {
        Some(c) => {
            // SAFETY: cpu_set_t is a plain bit array, valid when zeroed; CPU_SET writes one
            // bit inside it.
            #[allow(unsafe_code)]
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(c, &mut set);
                set
            }
        }
        None => allowed()?,
    };
    // SAFETY: sched_setaffinity reads `size_of::<cpu_set_t>()` bytes from `set`.
    #[allow(unsafe_code)]
    let r = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Lets sleeps end within ~1 us of their deadline instead of the default 50 us.
pub(crate) fn set_timer_slack() {
    // SAFETY: prctl with PR_SET_TIMERSLACK takes one integer argument and touches no memory.
    #[allow(unsafe_code)]
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000, 0, 0, 0);
    }
}

/// CPU time the hypervisor has taken from this machine's vCPUs so far, in milliseconds
/// (`steal` in `/proc/stat`; 0 where the kernel does not report it).
pub(crate) fn steal_ms() -> f64 {
    hyphae_bench::sys::steal_seconds() * 1000.0
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
