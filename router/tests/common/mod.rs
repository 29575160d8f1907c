//! Helpers for multi-process tests: start `hyphae-router` processes on loopback, talk to their
//! admin API, and play a peer with hyphae-wire.

#![allow(dead_code, unreachable_pub)]

pub mod netns;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hyphae_test_support::{Capability, require};
use hyphae_wire::babel::{Ihu, Tlv, Update};
use hyphae_wire::data::{DataFrame, DataHeader};
use hyphae_wire::deframer::{Deframer, Frame};
use hyphae_wire::identity::{PublicKey, SecretKey};
use hyphae_wire::seal::{SealingKey, UserDataKind};
use hyphae_wire::{Interval, Metric, RouterId, SeqNo};
use serde_json::Value;

pub use hyphae_test_support::free_port;

/// The drivers `test` runs under here: portable always, uring where io_uring works (see
/// [`driver_here`]).
pub fn drivers(test: &str) -> Vec<&'static str> {
    ["portable", "uring"]
        .into_iter()
        .filter(|d| driver_here(&format!("{test} ({d} driver)"), d))
        .collect()
}

/// Whether `driver` can run here. The uring driver needs io_uring: where it is missing, `test`
/// prints `SKIPPED: <test>: needs io_uring (...)` and this is false, or under
/// `HYPHAE_REQUIRE_CAPABILITIES=1` it fails (see `hyphae_test_support`).
#[track_caller]
pub fn driver_here(test: &str, driver: &str) -> bool {
    driver != "uring" || require(test, Capability::IoUring)
}

pub struct Node {
    pub name: String,
    pub child: Child,
    pub port: u16,
    pub api: SocketAddr,
    pub dir: PathBuf,
}

impl Node {
    /// Starts a router with `extra` flags; its key is derived from `seed`.
    pub fn start(name: &str, driver: &str, seed: u8, extra: &[String]) -> Self {
        Self::launch(name, driver, seed, |key, dir, port, api| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_hyphae-router"));
            c.args(["-k", key, "-t", &port.to_string(), "-q", &port.to_string()])
                .args([
                    "--api-addr",
                    &api.to_string(),
                    "--disable-peer-discovery",
                    "--no-tun",
                    "--workers",
                    "2",
                ])
                .args(["--driver", driver])
                .args(["--local-socket", dir.join("router.sock").to_str().unwrap()])
                .args(extra);
            c
        })
    }

    /// Starts stock mycelium (`bin`, see `hyphae_test_support::stock_mycelium`) dialing
    /// `peers`; its key is derived from `seed`.
    pub fn start_stock(name: &str, bin: &std::path::Path, seed: u8, peers: &[String]) -> Self {
        Self::launch(name, "stock", seed, |key, dir, port, api| {
            let config = dir.join("config.toml");
            let list: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
            std::fs::write(&config, format!("peers = [{}]\n", list.join(", "))).unwrap();
            let mut c = Command::new(bin);
            c.args(["-k", key, "-c", config.to_str().unwrap()])
                .args(["--no-tun", "--disable-peer-discovery"])
                .args(["-t", &port.to_string(), "-q", &port.to_string()])
                .args(["--api-addr", &api.to_string()])
                .args(["--jsonrpc-addr", &format!("127.0.0.1:{}", free_port())]);
            c
        })
    }

    /// Starts a node with the command `command(key file, dir, port, api address)` makes,
    /// again on new ports if a parallel test took the ones found free.
    fn launch(
        name: &str,
        label: &str,
        seed: u8,
        command: impl Fn(&str, &std::path::Path, u16, SocketAddr) -> Command,
    ) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "hyphae-it-{}-{name}-{label}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key.bin");
        std::fs::write(&key, [seed; 32]).unwrap();
        // A port found free can be taken by a parallel test before the node binds it: then
        // the node exits with "Address already in use" and is started again on new ports.
        for _attempt in 0..5 {
            let port = free_port();
            let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let log = std::fs::File::create(dir.join("log")).unwrap();
            let child = command(key.to_str().unwrap(), &dir, port, api)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let mut n = Self {
                name: name.into(),
                child,
                port,
                api,
                dir: dir.clone(),
            };
            let up = wait_until(Duration::from_secs(10), || {
                if let Ok(Some(_)) = n.child.try_wait() {
                    return Some(false);
                }
                http(n.api, "GET", "/api/v1/admin", None).map(|_| true)
            });
            match up {
                // Still running (its own API answered, not another process on that port).
                Some(true) if matches!(n.child.try_wait(), Ok(None)) => return n,
                Some(_) if n.log().contains("Address already in use") => {
                    let _ = n.child.kill();
                    let _ = n.child.wait();
                    std::mem::forget(n);
                    continue;
                }
                _ => panic!("{name} did not start: {}", n.log()),
            }
        }
        panic!("{name} did not start: no free ports")
    }

    pub fn local_socket(&self) -> PathBuf {
        self.dir.join("router.sock")
    }

    pub fn tcp(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    pub fn quic(&self) -> String {
        format!("quic://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Value {
        let (status, body) = http(self.api, "GET", path, None).expect("API answers");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    pub fn info(&self) -> Value {
        self.get("/api/v1/admin")
    }

    pub fn subnet(&self) -> String {
        self.info()["nodeSubnet"].as_str().unwrap().to_owned()
    }

    pub fn selected(&self) -> Vec<Value> {
        self.get("/api/v1/admin/routes/selected")
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn has_route(&self, subnet: &str) -> bool {
        self.selected().iter().any(|r| r["subnet"] == subnet)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit on SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("--- log of {} ---\n{}", self.name, self.log());
        }
    }
}

/// Polls `f` every 20 ms until it is `Some`/true or `limit` passes.
pub fn wait_until<T>(limit: Duration, mut f: impl FnMut() -> T) -> Option<T::Output>
where
    T: Ready,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().ready() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub trait Ready {
    type Output;
    fn ready(self) -> Option<Self::Output>;
}

impl Ready for bool {
    type Output = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Output = T;
    fn ready(self) -> Self {
        self
    }
}

/// A minimal HTTP/1.1 client: returns status and body, `None` if the server is unreachable.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(90))).ok()?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((status, body))
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

/// A test-controlled Mycelium peer over TCP.
pub struct FakePeer {
    pub secret: SecretKey,
    pub public: PublicKey,
    pub router_id: RouterId,
    pub stream: TcpStream,
    buf: BytesMut,
    deframer: Deframer,
}

impl FakePeer {
    pub fn connect(port: u16, seed: u8) -> Self {
        Self::from_stream(TcpStream::connect(("127.0.0.1", port)).unwrap(), seed)
    }

    /// A fake peer on a connection made elsewhere (for socket options set before connecting).
    pub fn from_stream(stream: TcpStream, seed: u8) -> Self {
        let secret = SecretKey::from_bytes([seed; 32]);
        let public = secret.public_key();
        stream.set_nodelay(true).unwrap();
        let router_id = RouterId::new(&public, 0, [seed, 1, 2, 3, 4, 5]);
        Self {
            secret,
            public,
            router_id,
            stream,
            buf: BytesMut::new(),
            deframer: Deframer::new(),
        }
    }

    pub fn address(&self) -> Ipv6Addr {
        self.public.address()
    }

    pub fn send_tlv(&mut self, t: Tlv) {
        let mut v = Vec::new();
        t.encode_frame(&mut v);
        self.stream.write_all(&v).unwrap();
    }

    /// Announces this peer's /64 (metric 0), as a node does first on a new link.
    pub fn announce(&mut self) {
        let u = Update {
            flags: 0,
            interval: Interval::from_secs(300),
            seqno: SeqNo(0),
            metric: Metric(0),
            subnet: self.public.subnet(),
            router_id: self.router_id,
        };
        self.send_tlv(Tlv::Update(u));
    }

    /// A sealed data frame from this peer to `dst`.
    pub fn data_frame(&self, dst: &PublicKey, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
        let key = SealingKey::new(&self.secret.shared_secret(dst));
        let mut body = Vec::new();
        key.seal([7; 12], UserDataKind::MESSAGE, payload, &mut body);
        let mut v = Vec::new();
        DataHeader {
            hop_limit,
            src: self.address(),
            dst: dst.address(),
        }
        .emit_frame(&body, &mut v)
        .unwrap();
        v
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads frames until a data frame arrives (answering Hellos) or `limit` passes.
    pub fn recv_data(&mut self, limit: Duration) -> Option<DataFrame<BytesMut>> {
        let deadline = Instant::now() + limit;
        loop {
            while let Some(f) = self
                .deframer
                .next_frame(&mut self.buf)
                .expect("router sends valid framing")
            {
                match f {
                    Frame::Data(d) => return Some(d),
                    Frame::Control(Tlv::Hello(_)) => {
                        self.send_tlv(Tlv::Ihu(Ihu {
                            rx_cost: Metric(10),
                            interval: Interval(6000),
                            address: None,
                        }));
                    }
                    _ => {}
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// Opens a data frame addressed to this peer.
    pub fn open(&self, frame: &mut DataFrame<BytesMut>, from: &PublicKey) -> Vec<u8> {
        let key = SealingKey::new(&self.secret.shared_secret(from));
        key.open(frame.body_mut()).expect("opens").1.to_vec()
    }

    /// Whether the router closed the link within `limit` (reads until EOF or error).
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut chunk = [0u8; 65536];
        while Instant::now() < deadline {
            self.stream
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }
}
