//! Shared helpers for hyphae's benchmarks: criterion benchmarks are in `benches/`, the load
//! generators in `src/bin/`.

pub mod fake_peer;
pub mod sys;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};
use bytes::{Bytes, BytesMut};
use hyphae_wire::framing::{self, Kind, Message, Reply, Subscribe};

/// Where [`free_port`] looks first: below Linux's default ephemeral range (32768-60999), so
/// that the benchmarks' own outgoing connections, which draw their source ports from that
/// range, cannot take a port between the pick and the router's bind.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port free for TCP and UDP on every address right now (a router binds `[::]:port`, which a
/// socket on any address with that port would block), preferably outside the ephemeral range.
pub fn free_port() -> std::io::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    let free = |p: u16| {
        std::net::UdpSocket::bind(("::", p)).is_ok() && TcpListener::bind(("::", p)).is_ok()
    };
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    for i in 0..200u32 {
        h.write_u32(i);
        let p = PORTS.start + (h.finish() % u64::from(PORTS.end - PORTS.start)) as u16;
        if free(p) {
            return Ok(p);
        }
    }
    for _ in 0..100 {
        let p = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if free(p) {
            return Ok(p);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no port free for TCP and UDP",
    ))
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

/// An application on a router's local socket (hyphae framing): sends messages, reads frames.
#[derive(Debug)]
pub struct App {
    s: UnixStream,
    buf: BytesMut,
}

impl App {
    /// Connects to the local socket at `p`.
    pub fn connect(p: &Path) -> Result<Self> {
        Ok(Self {
            s: UnixStream::connect(p)?,
            buf: BytesMut::with_capacity(1 << 20),
        })
    }

    /// Bounds every read (`None`: reads wait forever).
    pub fn set_read_timeout(&self, limit: Option<Duration>) -> Result<()> {
        Ok(self.s.set_read_timeout(limit)?)
    }

    /// Sends one message.
    pub fn send(&mut self, m: &Message<'_>) -> Result<()> {
        let mut b = BytesMut::new();
        m.encode(framing::DEFAULT_MAX_BODY, &mut b)?;
        self.s.write_all(&b)?;
        Ok(())
    }

    /// The next frame from the router.
    pub fn recv(&mut self) -> Result<(Kind, Bytes)> {
        loop {
            if let Some(f) = framing::split_frame(&mut self.buf, framing::DEFAULT_MAX_BODY)? {
                return Ok(f);
            }
            self.buf.reserve(1 << 16);
            let mut chunk = vec![0u8; 1 << 16];
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                bail!("socket closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// An application on the local socket at `sock` that echoes every message on `topic` back as
/// its reply, until the socket closes.
pub fn responder(sock: &Path, topic: &[u8]) -> Result<()> {
    let mut app = App::connect(sock)?;
    app.send(&Message::Subscribe(Subscribe {
        tag: 0,
        topic: Some(topic),
    }))?;
    loop {
        let (kind, body) = app.recv()?;
        if let Ok(Message::Deliver(d)) = Message::decode(kind, &body) {
            app.send(&Message::Reply(Reply {
                tag: 1,
                id: d.id,
                payload: d.payload,
            }))?;
        }
    }
}
