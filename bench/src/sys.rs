//! What load generators need from the OS: child processes that die with the benchmark, CPU
//! time from `/proc`, socket options, a description of the machine, and a tiny HTTP GET.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A child process with its output in a log file, killed and reaped on drop, and killed by
/// the kernel if the benchmark dies first (`PR_SET_PDEATHSIG`).
#[derive(Debug)]
pub struct Proc {
    label: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr to `log`. Call from the main thread only: the child
    /// gets SIGKILL when the thread that started it ends.
    pub fn spawn(label: &str, cmd: &mut Command, log: PathBuf) -> Result<Self> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        die_with_parent(cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {label} ({})", cmd.get_program().display()))?;
        Ok(Self {
            label: label.to_owned(),
            child,
            log,
        })
    }

    /// What it was started as.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// An error (with the end of its log) if the process has exited.
    pub fn check(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); end of {}:\n{}",
                self.label,
                self.log.display(),
                tail(&self.log, 20)
            );
        }
        Ok(())
    }

    /// User plus system CPU seconds it has used (0 if `/proc` does not say).
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid()).unwrap_or(0.0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child gets SIGKILL when this process (precisely: the spawning thread) dies, so an
/// interrupted or killed benchmark leaves no router or edge behind.
#[allow(unsafe_code)]
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe, and reads errno.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Polls `f` every `every` until it gives `Some`, running `check` between polls (it fails when
/// a process the wait depends on has exited); `Ok(None)` once `limit` has passed.
pub fn poll_until<T>(
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<()>,
    mut f: impl FnMut() -> Option<T>,
) -> Result<Option<T>> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(Some(v));
        }
        check()?;
        if std::time::Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(every);
    }
}

/// The last `lines` lines of a text file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// User plus system CPU seconds of process `pid`, all its threads (`/proc/PID/stat` fields 14
/// and 15).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / clock_ticks_per_s())
}

/// The kernel's clock ticks per second (the unit of `/proc` CPU times).
pub fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf reads a configuration value and touches no memory of ours.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    hz.max(1.0)
}

/// CPU time the hypervisor took from this machine's vCPUs so far, in seconds (`steal` in
/// `/proc/stat`; 0 where the kernel does not report it).
pub fn steal_seconds() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()?
                .split_whitespace()
                .nth(8)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |t| t / clock_ticks_per_s())
}

/// UDP datagrams the kernel dropped because a socket's receive buffer was full, machine-wide,
/// IPv4 and IPv6 (`RcvbufErrors` in `/proc/net/snmp` and `Udp6RcvbufErrors` in
/// `/proc/net/snmp6`).
pub fn udp_rcvbuf_errors() -> u64 {
    let v4 = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = v4.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap_or(""), udp.next().unwrap_or(""));
    let v4 = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .unwrap_or(0);
    let v6 = std::fs::read_to_string("/proc/net/snmp6")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Udp6RcvbufErrors"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    v4 + v6
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A `/proc/PID/status` field in bytes (`VmRSS`, `VmHWM`: the kernel gives them in kB).
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A count field of `/proc/PID/status` (`Threads`).
pub fn status_count(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .parse()
        .ok()
}

/// Descriptors process `pid` holds open (entries of `/proc/PID/fd`).
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// A TCP connection to `to` from source address `from` (port chosen by the kernel), the
/// connect bounded by `limit`. On Linux every address of 127.0.0.0/8 is local, so fake peers
/// can come from as many loopback addresses as they like.
#[allow(unsafe_code)]
pub fn connect_from(from: IpAddr, to: SocketAddr, limit: Duration) -> std::io::Result<TcpStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    if from.is_ipv4() != to.is_ipv4() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("cannot connect from {from} to {to}"),
        ));
    }
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) takes no pointers; a descriptor it returns is ours to own.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // Linux bounds a blocking connect(2) by the send timeout.
    let tv = libc::timeval {
        tv_sec: limit.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(limit.subsec_micros() as i32),
    };
    let (src, src_len) = sockaddr(SocketAddr::new(from, 0));
    let (dst, dst_len) = sockaddr(to);
    // SAFETY: every pointer is to a live local of the length passed with it, on a descriptor
    // this function owns.
    let ok = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        ) == 0
            && libc::bind(fd, (&src as *const libc::sockaddr_storage).cast(), src_len) == 0
            && libc::connect(fd, (&dst as *const libc::sockaddr_storage).cast(), dst_len) == 0
    };
    if !ok {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EINPROGRESS) {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
        } else {
            e
        });
    }
    let s = TcpStream::from(sock);
    s.set_write_timeout(None)?;
    Ok(s)
}

/// `a` as a C socket address.
#[allow(unsafe_code)]
fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid `sockaddr_storage`.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sockaddr_storage` is larger than and aligned for every socket address.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// The machine: CPU model, vCPUs this process may use, memory and kernel.
#[derive(Debug, Clone)]
pub struct Machine {
    /// `model name` from `/proc/cpuinfo`.
    pub cpu: String,
    /// vCPUs available to this process.
    pub cores: usize,
    /// Memory in GiB.
    pub mem_gib: u64,
    /// `uname -r`.
    pub kernel: String,
}

impl Machine {
    /// This machine.
    pub fn here() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown CPU", |(_, m)| m.trim())
            .to_owned();
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb / 1024 / 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            mem_gib,
            kernel,
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} vCPU {}, {} GiB, Linux {}",
            self.cores, self.cpu, self.mem_gib, self.kernel
        )
    }
}

/// The first line `cmd --version` prints, within 5 s (`None` if it fails).
pub fn version_of(bin: &Path) -> Option<String> {
    let mut child = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..250 {
        if let Ok(Some(_)) = child.try_wait() {
            let mut out = String::new();
            child.stdout.take()?.read_to_string(&mut out).ok()?;
            return out.lines().next().map(str::to_owned);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Sets an integer socket option, ignoring failure (the options set here are tuning only).
pub fn set_int_opt(s: &impl AsRawFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local, on a descriptor
    // the caller owns for the duration of the call.
    #[allow(unsafe_code)]
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`: the body of a 200 answer, within `limit`.
pub fn http_get(addr: SocketAddr, path: &str, limit: Duration) -> Result<String> {
    let (status, line, body) = http(addr, "GET", path, None, limit)?;
    if status != 200 {
        bail!("GET {path}: {line}");
    }
    Ok(body)
}

/// `POST path` with a JSON body over HTTP/1.1 with `Connection: close`, within `limit`: the
/// status and the body, whatever the status.
pub fn http_post(
    addr: SocketAddr,
    path: &str,
    json: &str,
    limit: Duration,
) -> Result<(u16, String)> {
    let (status, _, body) = http(addr, "POST", path, Some(json), limit)?;
    Ok((status, body))
}

/// One request: the status, the status line and the body (de-chunked).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
    limit: Duration,
) -> Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, limit)?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(body) = json {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        req.push_str("\r\n");
    }
    s.write_all(req.as_bytes())?;
    let mut resp = Vec::new();
    s.take(64 << 20).read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no end of the HTTP header")?;
    let line = head.lines().next().unwrap_or_default().to_owned();
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{method} {path}: no status in {line:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, line, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunk_joins_chunks() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }

    #[test]
    fn own_process_figures_are_readable() {
        let me = std::process::id();
        assert!(status_bytes(me, "VmRSS").is_some_and(|b| b > 0));
        assert!(status_count(me, "Threads").is_some_and(|n| n >= 1));
        assert!(open_fds(me).is_some_and(|n| n >= 3));
    }

    #[test]
    fn connects_from_another_loopback_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let from: IpAddr = "127.3.4.5".parse().unwrap();
        let s = connect_from(from, to, Duration::from_secs(2)).unwrap();
        assert_eq!(s.local_addr().unwrap().ip(), from);
        let (_, peer) = l.accept().unwrap();
        assert_eq!(peer.ip(), from);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(cpu_seconds(std::process::id()).is_some());
    }
}
