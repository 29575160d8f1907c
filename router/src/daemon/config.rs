//! Command-line flags and the config file, with the reference's names where they make sense.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use super::admission::{DEFAULT_MAX_INBOUND, DEFAULT_MAX_INBOUND_PER_ADDRESS};
use super::endpoint::{Endpoint, Proto};

/// Default TCP listen port (the reference's).
pub const DEFAULT_TCP_PORT: u16 = 9651;
/// Default QUIC (UDP) listen port.
pub const DEFAULT_QUIC_PORT: u16 = 9651;
/// Default link-local discovery port.
pub const DEFAULT_DISCOVERY_PORT: u16 = 9650;
/// Default admin API address.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:8989";
/// The reference's TUN name on Linux.
pub const DEFAULT_TUN_NAME: &str = "mycelium";

/// hyphae-router: a Mycelium overlay node (wire-compatible with mycelium 0.7.x).
#[derive(Debug, Clone, Parser)]
#[command(name = "hyphae-router", version, about)]
pub struct Cli {
    /// Key file (raw 32-byte x25519 secret); created if missing.
    /// Default: $XDG_DATA_HOME/hyphae/priv_key.bin (~/.local/share/hyphae/priv_key.bin).
    #[arg(short = 'k', long = "key-file")]
    pub key_file: Option<PathBuf>,
    /// TOML config file; may set `peers = ["tcp://..."]` and any flag below by its long name.
    #[arg(short = 'c', long = "config-file")]
    pub config_file: Option<PathBuf>,
    /// Peers to connect to, as proto://address:port (tcp or quic).
    #[arg(long, num_args = 1.., value_name = "ENDPOINT")]
    pub peers: Vec<String>,
    /// TCP listen port.
    #[arg(short = 't', long = "tcp-listen-port")]
    pub tcp_listen_port: Option<u16>,
    /// QUIC (UDP) listen port.
    #[arg(short = 'q', long = "quic-listen-port")]
    pub quic_listen_port: Option<u16>,
    /// Do not listen for or dial QUIC peers.
    #[arg(long)]
    pub disable_quic: bool,
    /// UDP port for link-local peer discovery.
    #[arg(long)]
    pub peer_discovery_port: Option<u16>,
    /// Do not discover peers on the local link.
    #[arg(long)]
    pub disable_peer_discovery: bool,
    /// Admin HTTP API address.
    #[arg(long)]
    pub api_addr: Option<SocketAddr>,
    /// Prometheus metrics address (off unless set).
    #[arg(long)]
    pub metrics_api_address: Option<SocketAddr>,
    /// Run without a TUN device (the message subsystem and transit still work).
    #[arg(long)]
    pub no_tun: bool,
    /// Most links peers may open to this node (QUIC handshakes in flight count); more are
    /// refused and counted. Links this node dials are never refused.
    #[arg(long, value_name = "N")]
    pub max_inbound: Option<usize>,
    /// Most links peers may open to this node from one address.
    #[arg(long, value_name = "N")]
    pub max_inbound_per_address: Option<usize>,
    /// Most route entries kept in all (one per subnet and neighbour announcing it, 65,536 per
    /// peer by default); Updates beyond it are dropped and counted.
    #[arg(long, value_name = "N")]
    pub max_routes: Option<usize>,
    /// Most route entries kept from one peer; Updates beyond it are dropped and counted.
    #[arg(long, value_name = "N")]
    pub max_routes_per_peer: Option<usize>,
    /// Most peers found by link-local discovery kept at once; beacons from more are ignored and
    /// counted.
    #[arg(long, value_name = "N")]
    pub max_discovered_peers: Option<usize>,
    /// Name of the TUN device that carries the node's IPv6 overlay traffic (default
    /// "mycelium", as the reference).
    #[arg(long, value_name = "NAME")]
    pub tun_name: Option<String>,
    /// Log errors only.
    #[arg(long)]
    pub silent: bool,
    /// Debug logging.
    #[arg(short = 'd', long)]
    pub debug: bool,
    /// Data-plane worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Hello interval towards peers: "300ms" (the default), "2s", or whole seconds; 50 ms to
    /// 20 s (the reference uses 20 s). A peer that answers no Hello (and sends nothing else)
    /// for five intervals is dead, so with the default a silently dead relay is routed around
    /// in under 2 s. Peers, stock ones included, answer every Hello with an IHU whatever its
    /// interval.
    #[arg(long, value_name = "DURATION")]
    pub hello_interval: Option<String>,
    /// I/O driver: "auto" (default: both are timed at start, about 50 ms, and io_uring is
    /// kept only where it was clearly faster; see bench/README.md, "io_uring"), "uring" (TCP
    /// links on an io_uring ring per worker) or "portable" (tokio on epoll).
    #[arg(long)]
    pub driver: Option<String>,
    /// Receive buffer of each TCP peer socket, in bytes (default: the kernel's autotuning).
    /// A small buffer bounds how long frames wait when this node is saturated, at the cost of
    /// throughput on long paths (the buffer caps a link at buffer / round-trip time).
    #[arg(long, value_name = "BYTES")]
    pub tcp_rcvbuf: Option<usize>,
    /// Receive buffers of TCP peer links: "auto" (default) keeps each link's buffer near twice
    /// its bandwidth-delay product (at least 256 KiB), so frames queue in the kernel for about
    /// one round trip when this node is the bottleneck instead of filling a 32 MiB autotuned
    /// buffer; "kernel" leaves it to Linux autotuning. --tcp-rcvbuf fixes it instead.
    #[arg(long, value_name = "auto|kernel")]
    pub tcp_window: Option<String>,
    /// The local application socket (hyphae framing; owner-only unless --local-socket-mode
    /// says otherwise). Default:
    /// $XDG_RUNTIME_DIR/hyphae/router.sock, or /run/hyphae/router.sock as root. "none" disables it.
    /// A socket another process still serves is refused (two routers on one host need their own
    /// paths); a stale one is replaced; the file is removed at shutdown.
    #[arg(long, value_name = "PATH")]
    pub local_socket: Option<PathBuf>,
    /// Permissions of the local socket, in octal: 0600 (default) lets only the router's user
    /// connect, 0660 its group too (e.g. a federation edge running as another user in the
    /// router's group). Bits for other users are refused.
    #[arg(long, value_name = "MODE")]
    pub local_socket_mode: Option<String>,
    /// MiB of answers a local-socket application may leave unread before its connection is
    /// closed (default 256: a federation edge relays bodies of tens of MB, and a busy one
    /// reads late). Its subscriptions take no message while half of this is unread.
    #[arg(long, value_name = "MIB")]
    pub local_socket_outbox_mib: Option<usize>,
    /// The only directory topic forward sockets may live in (the message API cannot point the
    /// router at other sockets on this host). Default: `forward/` beside the default local
    /// socket, e.g. /run/hyphae/forward as root.
    #[arg(long, value_name = "DIR")]
    pub topic_forward_dir: Option<PathBuf>,
}

/// The config file: every field optional; flags win over the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    peers: Option<Vec<String>>,
    tcp_listen_port: Option<u16>,
    quic_listen_port: Option<u16>,
    disable_quic: Option<bool>,
    peer_discovery_port: Option<u16>,
    disable_peer_discovery: Option<bool>,
    api_addr: Option<SocketAddr>,
    metrics_api_address: Option<SocketAddr>,
    no_tun: Option<bool>,
    tun_name: Option<String>,
    max_inbound: Option<usize>,
    max_inbound_per_address: Option<usize>,
    max_routes: Option<usize>,
    max_routes_per_peer: Option<usize>,
    max_discovered_peers: Option<usize>,
    workers: Option<usize>,
    hello_interval: Option<Interval>,
    driver: Option<String>,
    key_file: Option<PathBuf>,
    tcp_rcvbuf: Option<usize>,
    tcp_window: Option<String>,
    local_socket: Option<PathBuf>,
    local_socket_mode: Option<String>,
    local_socket_outbox_mib: Option<usize>,
    topic_forward_dir: Option<PathBuf>,
}

/// Which I/O driver the data plane uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverChoice {
    /// Timed at start: io_uring where it was clearly faster, else portable.
    Auto,
    /// io_uring or fail.
    Uring,
    /// Plain tokio (epoll).
    Portable,
}

/// The resolved settings the daemon runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Key file path.
    pub key_file: PathBuf,
    /// Static peers.
    pub peers: Vec<Endpoint>,
    /// TCP listen port.
    pub tcp_port: u16,
    /// QUIC port, `None` if disabled.
    pub quic_port: Option<u16>,
    /// Discovery port, `None` if disabled.
    pub discovery_port: Option<u16>,
    /// Admin API address.
    pub api_addr: SocketAddr,
    /// Metrics address.
    pub metrics_addr: Option<SocketAddr>,
    /// Worker threads.
    pub workers: usize,
    /// Hello interval.
    pub hello_interval: Duration,
    /// I/O driver.
    pub driver: DriverChoice,
    /// Log level.
    pub log_level: &'static str,
    /// Receive buffer for TCP peer sockets (`None`: kernel autotuning).
    pub tcp_rcvbuf: Option<usize>,
    /// Size TCP receive buffers to each link's bandwidth-delay product (`--tcp-window auto`).
    pub tcp_window_governor: bool,
    /// The local application socket, if enabled.
    pub local_socket: Option<PathBuf>,
    /// Permission bits of the local socket (never any for other users).
    pub local_socket_mode: u32,
    /// Unread answer bytes per local-socket connection before it is closed.
    pub local_socket_outbox: usize,
    /// Where topic forward sockets may live.
    pub topic_forward_dir: PathBuf,
    /// The TUN device's name, `None` with `--no-tun`.
    pub tun_name: Option<String>,
    /// Cap on inbound links.
    pub max_inbound: usize,
    /// Cap on inbound links from one address.
    pub max_inbound_per_address: usize,
    /// Cap on route entries in all.
    pub max_routes: usize,
    /// Cap on route entries from one peer.
    pub max_routes_per_peer: usize,
    /// Cap on peers found by link-local discovery.
    pub max_discovered_peers: usize,
}

/// Default cap on route entries in all: room for 8 peers each announcing the default
/// per-peer cap, far above today's network (a few thousand nodes).
pub const DEFAULT_MAX_ROUTES: usize = 1 << 19;
/// Default cap on route entries from one peer.
pub const DEFAULT_MAX_ROUTES_PER_PEER: usize = 1 << 16;
/// Default cap on peers found by link-local discovery.
pub const DEFAULT_MAX_DISCOVERED_PEERS: usize = 64;

/// The smallest and largest receive buffer `--tcp-rcvbuf` takes (the kernel takes an `int`, and
/// doubles what it is given).
const MIN_TCP_RCVBUF: usize = 4096;
const MAX_TCP_RCVBUF: usize = (i32::MAX / 2) as usize;
/// The largest `--local-socket-outbox-mib` (1 TiB).
const MAX_OUTBOX_MIB: usize = 1 << 20;

/// A configuration error, printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The config file is not valid.
    #[error("config file {0}: {1}")]
    Parse(PathBuf, String),
    /// A value is invalid.
    #[error("{0}")]
    Invalid(String),
}

impl Cli {
    /// Resolves flags, config file and defaults into settings.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let file = match &self.config_file {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        let peers = if self.peers.is_empty() {
            file.peers.unwrap_or_default()
        } else {
            self.peers.clone()
        };
        let peers = peers
            .iter()
            .map(|p| {
                p.parse::<Endpoint>()
                    .map_err(|e| ConfigError::Invalid(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let workers = self
            .workers
            .or(file.workers)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if workers == 0 || workers > 256 {
            return Err(ConfigError::Invalid(format!(
                "--workers must be 1..=256, not {workers}"
            )));
        }
        let file_hello = file.hello_interval.map(|i| match i {
            Interval::Secs(s) => s.to_string(),
            Interval::Text(t) => t,
        });
        let hello = match self.hello_interval.clone().or(file_hello) {
            Some(h) => parse_interval(&h)?,
            None => DEFAULT_HELLO_INTERVAL,
        };
        let tcp_window_governor = match self
            .tcp_window
            .as_deref()
            .or(file.tcp_window.as_deref())
            .unwrap_or("auto")
        {
            "auto" => true,
            "kernel" => false,
            other => {
                return Err(ConfigError::Invalid(format!(
                    "--tcp-window must be auto or kernel, not {other:?}"
                )));
            }
        };
        let topic_forward_dir = self
            .topic_forward_dir
            .clone()
            .or(file.topic_forward_dir)
            .unwrap_or_else(|| {
                default_local_socket()
                    .parent()
                    .map_or_else(|| PathBuf::from("/run/hyphae"), Path::to_path_buf)
                    .join("forward")
            });
        if !topic_forward_dir.is_absolute() {
            return Err(ConfigError::Invalid(format!(
                "--topic-forward-dir must be an absolute path, not {}",
                topic_forward_dir.display()
            )));
        }
        let driver = match self
            .driver
            .as_deref()
            .or(file.driver.as_deref())
            .unwrap_or("auto")
        {
            "auto" => DriverChoice::Auto,
            "uring" | "io_uring" => DriverChoice::Uring,
            "portable" => DriverChoice::Portable,
            other => {
                return Err(ConfigError::Invalid(format!(
                    "--driver must be auto, uring or portable, not {other:?}"
                )));
            }
        };
        let local_socket_mode = match self
            .local_socket_mode
            .as_deref()
            .or(file.local_socket_mode.as_deref())
        {
            Some(m) => parse_socket_mode(m)?,
            None => DEFAULT_LOCAL_SOCKET_MODE,
        };
        let disable_quic = self.disable_quic || file.disable_quic.unwrap_or(false);
        if disable_quic && let Some(p) = peers.iter().find(|p| p.proto == Proto::Quic) {
            return Err(ConfigError::Invalid(format!(
                "peer {p}: QUIC is disabled (--disable-quic)"
            )));
        }
        let tcp_rcvbuf = self.tcp_rcvbuf.or(file.tcp_rcvbuf);
        if let Some(n) = tcp_rcvbuf
            && !(MIN_TCP_RCVBUF..=MAX_TCP_RCVBUF).contains(&n)
        {
            return Err(ConfigError::Invalid(format!(
                "--tcp-rcvbuf must be {MIN_TCP_RCVBUF}..={MAX_TCP_RCVBUF} bytes, not {n}"
            )));
        }
        let outbox_mib = self
            .local_socket_outbox_mib
            .or(file.local_socket_outbox_mib)
            .unwrap_or(256);
        if !(1..=MAX_OUTBOX_MIB).contains(&outbox_mib) {
            return Err(ConfigError::Invalid(format!(
                "--local-socket-outbox-mib must be 1..={MAX_OUTBOX_MIB}, not {outbox_mib}"
            )));
        }
        let disable_discovery =
            self.disable_peer_discovery || file.disable_peer_discovery.unwrap_or(false);
        let api_addr = match self.api_addr.or(file.api_addr) {
            Some(a) => a,
            None => DEFAULT_API_ADDR
                .parse()
                .map_err(|_| ConfigError::Invalid("default API address".into()))?,
        };
        let key_file = match self.key_file.clone().or(file.key_file) {
            Some(k) => k,
            None => default_key_file()?,
        };
        let log_level = match (self.silent, self.debug) {
            (true, _) => "error",
            (false, true) => "debug",
            _ => "info",
        };
        let max_inbound = self
            .max_inbound
            .or(file.max_inbound)
            .unwrap_or(DEFAULT_MAX_INBOUND);
        let max_inbound_per_address = self
            .max_inbound_per_address
            .or(file.max_inbound_per_address)
            .unwrap_or(DEFAULT_MAX_INBOUND_PER_ADDRESS);
        if max_inbound == 0 || max_inbound_per_address == 0 {
            return Err(ConfigError::Invalid(
                "--max-inbound and --max-inbound-per-address must be at least 1".into(),
            ));
        }
        let max_routes = self
            .max_routes
            .or(file.max_routes)
            .unwrap_or(DEFAULT_MAX_ROUTES);
        let max_routes_per_peer = self
            .max_routes_per_peer
            .or(file.max_routes_per_peer)
            .unwrap_or(DEFAULT_MAX_ROUTES_PER_PEER);
        if max_routes == 0 || max_routes_per_peer == 0 {
            return Err(ConfigError::Invalid(
                "--max-routes and --max-routes-per-peer must be at least 1".into(),
            ));
        }
        let max_discovered_peers = self
            .max_discovered_peers
            .or(file.max_discovered_peers)
            .unwrap_or(DEFAULT_MAX_DISCOVERED_PEERS);
        let no_tun = self.no_tun || file.no_tun.unwrap_or(false);
        let tun_name = match self.tun_name.clone().or(file.tun_name) {
            _ if no_tun => None,
            Some(n) => Some(check_tun_name(n)?),
            None => Some(DEFAULT_TUN_NAME.to_owned()),
        };
        Ok(Settings {
            key_file,
            peers,
            tcp_port: self
                .tcp_listen_port
                .or(file.tcp_listen_port)
                .unwrap_or(DEFAULT_TCP_PORT),
            quic_port: (!disable_quic).then(|| {
                self.quic_listen_port
                    .or(file.quic_listen_port)
                    .unwrap_or(DEFAULT_QUIC_PORT)
            }),
            discovery_port: (!disable_discovery).then(|| {
                self.peer_discovery_port
                    .or(file.peer_discovery_port)
                    .unwrap_or(DEFAULT_DISCOVERY_PORT)
            }),
            api_addr,
            metrics_addr: self.metrics_api_address.or(file.metrics_api_address),
            workers,
            hello_interval: hello,
            driver,
            log_level,
            tcp_rcvbuf,
            tcp_window_governor,
            local_socket: match self.local_socket.clone().or(file.local_socket) {
                Some(p) if p.as_os_str() == "none" => None,
                Some(p) => Some(p),
                None => Some(default_local_socket()),
            },
            local_socket_mode,
            local_socket_outbox: outbox_mib << 20,
            topic_forward_dir,
            tun_name,
            max_inbound,
            max_inbound_per_address,
            max_routes,
            max_routes_per_peer,
            max_discovered_peers,
        })
    }
}

/// Default permissions of the local socket: the router's user only.
pub const DEFAULT_LOCAL_SOCKET_MODE: u32 = 0o600;

/// Parses `--local-socket-mode`: an octal mode such as `0660` (a `0o` prefix is accepted) with
/// no bits outside 0o777 and none for other users.
/// A Hello interval in the config file: whole seconds, or text as on the command line.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Interval {
    Secs(u64),
    Text(String),
}

/// hyphae's Hello interval: short enough that a silently dead peer is found in 1.5 s.
pub const DEFAULT_HELLO_INTERVAL: Duration = Duration::from_millis(300);

/// A Hello interval: "300ms", "2s" or whole seconds, 50 ms ..= 20 s.
fn parse_interval(s: &str) -> Result<Duration, ConfigError> {
    let bad = || {
        ConfigError::Invalid(format!(
            "--hello-interval must be 50ms..=20s (\"300ms\", \"2s\" or seconds), not {s:?}"
        ))
    };
    let d = if let Some(ms) = s.strip_suffix("ms") {
        Duration::from_millis(ms.trim().parse().map_err(|_| bad())?)
    } else {
        let secs = s.strip_suffix('s').unwrap_or(s).trim();
        Duration::from_secs(secs.parse().map_err(|_| bad())?)
    };
    match (Duration::from_millis(50)..=Duration::from_secs(20)).contains(&d) {
        true => Ok(d),
        false => Err(bad()),
    }
}

/// An interface name Linux accepts: 1-15 bytes, no '/', ':' or whitespace, not "." or "..".
fn check_tun_name(name: String) -> Result<String, ConfigError> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    match bad {
        true => Err(ConfigError::Invalid(format!(
            "--tun-name {name:?}: an interface name is 1-15 bytes without '/', ':' or spaces"
        ))),
        false => Ok(name),
    }
}

fn parse_socket_mode(s: &str) -> Result<u32, ConfigError> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let octal = !digits.is_empty() && digits.bytes().all(|b| matches!(b, b'0'..=b'7'));
    let mode = octal
        .then(|| u32::from_str_radix(digits, 8).ok())
        .flatten()
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "--local-socket-mode must be an octal mode such as 0600 or 0660, not {s:?}"
            ))
        })?;
    if mode & !0o777 != 0 {
        return Err(ConfigError::Invalid(format!(
            "--local-socket-mode {s}: only permission bits (0777) may be set, not \
             set-id or sticky bits"
        )));
    }
    if mode & 0o007 != 0 {
        return Err(ConfigError::Invalid(format!(
            "--local-socket-mode {s}: bits for other users would let anyone on the host use \
             the router; use 0600 or 0660 (and a shared group)"
        )));
    }
    Ok(mode)
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse(path.into(), toml_detail(&text, &e)))
}

/// A TOML error as one line naming where it is: `line N, key: message`.
fn toml_detail(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().replace('\n', " ");
    let Some(at) = e.span().map(|s| s.start) else {
        return msg;
    };
    let before = text.get(..at).unwrap_or(text);
    let n = before.matches('\n').count() + 1;
    let line = text.lines().nth(n - 1).unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() => format!("line {n}, {}: {msg}", key.trim()),
        _ => format!("line {n}: {msg}"),
    }
}

/// `$XDG_RUNTIME_DIR/hyphae/router.sock`, else `/run/hyphae/router.sock` (root) or
/// `/tmp/hyphae-<user>/router.sock`.
pub fn default_local_socket() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(d).join("hyphae/router.sock");
    }
    match std::env::var("USER")
        .ok()
        .filter(|u| u != "root" && !u.is_empty())
    {
        Some(u) => PathBuf::from(format!("/tmp/hyphae-{u}/router.sock")),
        None => PathBuf::from("/run/hyphae/router.sock"),
    }
}

/// `$XDG_DATA_HOME/hyphae/priv_key.bin`, else `$HOME/.local/share/hyphae/priv_key.bin`.
pub fn default_key_file() -> Result<PathBuf, ConfigError> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h).join(".local/share"),
            None => {
                return Err(ConfigError::Invalid(
                    "no HOME or XDG_DATA_HOME: pass --key-file".into(),
                ));
            }
        },
    };
    Ok(base.join("hyphae").join("priv_key.bin"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, ConfigError> {
        let mut v = vec!["hyphae-router", "-k", "/tmp/k"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?
            .settings()
    }

    #[test]
    fn defaults_are_the_references() {
        let s = parse(&[]).unwrap();
        assert_eq!(
            (s.tcp_port, s.quic_port, s.discovery_port),
            (9651, Some(9651), Some(9650))
        );
        assert_eq!(s.api_addr.to_string(), "127.0.0.1:8989");
        assert!(s.peers.is_empty() && s.workers >= 1);
        assert_eq!(s.hello_interval, Duration::from_millis(300));
        assert_eq!(s.local_socket_mode, 0o600);
        assert_eq!(s.tun_name.as_deref(), Some("mycelium"));
    }

    #[test]
    fn hello_interval_in_milliseconds_or_seconds_within_bounds() {
        let h = |a: &str| parse(&["--hello-interval", a]).map(|s| s.hello_interval);
        assert_eq!(h("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(h("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(h("20").unwrap(), Duration::from_secs(20));
        for bad in ["10ms", "21s", "0", "fast", "1.5s", ""] {
            let e = h(bad).unwrap_err().to_string();
            assert!(e.contains("--hello-interval"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn tun_name_no_tun_and_bad_names() {
        let s = parse(&["--tun-name", "myc0"]).unwrap();
        assert_eq!(s.tun_name.as_deref(), Some("myc0"));
        assert_eq!(
            parse(&["--no-tun", "--tun-name", "myc0"]).unwrap().tun_name,
            None
        );
        for bad in ["", "a/b", "a b", "sixteen-bytes-xx", "..", "a:b"] {
            let e = parse(&["--tun-name", bad]).unwrap_err().to_string();
            assert!(e.contains("interface name"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn local_socket_mode_is_octal_and_never_open_to_others() {
        for (arg, want) in [
            ("0660", 0o660),
            ("660", 0o660),
            ("0600", 0o600),
            ("0o640", 0o640),
            ("0", 0),
            ("000770", 0o770),
        ] {
            let s = parse(&["--local-socket-mode", arg]).unwrap();
            assert_eq!(s.local_socket_mode, want, "{arg}");
        }
        for arg in [
            "",
            "0o",
            "rw",
            "0x1b0",
            "0668",
            "-600",
            "+600",
            " 0660",
            "0660 ",
            "0666",
            "0661",
            "0602",
            "0604",
            "0777",
            "4660",
            "1660",
            "2660",
            "07777",
            "0100660",
            "77777777777",
        ] {
            let err = parse(&[&format!("--local-socket-mode={arg}")])
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("--local-socket-mode") && !err.contains('\n'),
                "{arg:?}: {err}"
            );
        }
    }

    #[test]
    fn flags_and_file() {
        let dir = std::env::temp_dir().join(format!("hyphae-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "peers = [\"tcp://127.0.0.1:1\"]\ntcp-listen-port = 7\n").unwrap();
        let s = parse(&["-c", f.to_str().unwrap(), "--disable-quic", "-t", "8"]).unwrap();
        assert_eq!(s.peers.len(), 1);
        assert_eq!((s.tcp_port, s.quic_port), (8, None));
        std::fs::write(&f, "peerz = []\n").unwrap();
        let err = parse(&["-c", f.to_str().unwrap()]).unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("peerz"), "{err}");
        assert!(parse(&["--peers", "udp://1.2.3.4:5"]).is_err());
        assert!(parse(&["--workers", "0"]).is_err());
        assert!(parse(&["--driver", "fast"]).is_err());
        std::fs::write(&f, "local-socket-mode = \"0640\"\n").unwrap();
        let s = parse(&["-c", f.to_str().unwrap()]).unwrap();
        assert_eq!(s.local_socket_mode, 0o640);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_tcp_rcvbuf_the_kernel_cannot_take_is_refused() {
        // setsockopt(SO_RCVBUF) takes a C int: 2^32 reaches the kernel as 0.
        for bad in ["0", "4294967296", "3000000000"] {
            let r = parse(&["--tcp-rcvbuf", bad]);
            assert!(
                r.is_err(),
                "--tcp-rcvbuf {bad} accepted: {:?}",
                r.map(|s| s.tcp_rcvbuf)
            );
        }
    }

    #[test]
    fn a_local_socket_outbox_of_zero_is_refused() {
        let r = parse(&["--local-socket-outbox-mib", "0"]);
        assert!(
            r.is_err(),
            "--local-socket-outbox-mib 0 accepted as {:?} bytes",
            r.map(|s| s.local_socket_outbox)
        );
    }

    #[test]
    fn a_quic_peer_with_quic_disabled_is_refused() {
        let r = parse(&["--disable-quic", "--peers", "quic://192.0.2.1:9651"]);
        assert!(r.is_err(), "a quic:// peer is accepted with --disable-quic");
    }

    #[test]
    fn file_type_errors_name_the_line_and_key() {
        let dir = std::env::temp_dir().join(format!("hyphae-cfg-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        let mut bad = Vec::new();
        for (text, key) in [
            ("tcp-listen-port = 70000\n", "tcp-listen-port"),
            ("workers = -1\n", "workers"),
            ("hello-interval = 1.5\n", "hello-interval"),
            ("api-addr = \"localhost:8989\"\n", "api-addr"),
        ] {
            std::fs::write(&f, text).unwrap();
            let err = parse(&["-c", f.to_str().unwrap()]).unwrap_err().to_string();
            if !err.contains(key) {
                bad.push(format!("{text:?} -> {err:?}"));
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            bad.is_empty(),
            "errors that do not name the key:\n{}",
            bad.join("\n")
        );
    }
}
