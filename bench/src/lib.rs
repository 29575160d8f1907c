//! Shared helpers for hyphae's benchmarks: criterion benchmarks are in `benches/`, the load
//! generators in `src/bin/`.

pub mod fake_peer;
pub mod sys;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

/// A TCP port free on loopback right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Appends the flags every benchmarked router runs with: its key file and TCP port, QUIC and
/// discovery off, the admin API on loopback, quiet logs, the I/O driver and worker count,
/// and a local socket beside the key file (so routers never share the default path).
pub fn router_args<'a>(
    cmd: &'a mut Command,
    key: &Path,
    port: u16,
    api: u16,
    driver: &str,
    workers: usize,
) -> &'a mut Command {
    cmd.arg("-k")
        .arg(key)
        .args([
            "-t",
            &port.to_string(),
            "--disable-quic",
            "--disable-peer-discovery",
            "--no-tun",
        ])
        .args(["--api-addr", &format!("127.0.0.1:{api}"), "--silent"])
        .args(["--driver", driver, "--workers", &workers.to_string()])
        .arg("--local-socket")
        .arg(key.with_extension("sock"))
}
