//! Message round trip over one router hop: request and reply between applications on two
//! routers (`hyphae-router` child processes peered over TCP), through the local socket and
//! through the HTTP API, at 1 KB and 200 KB, with hdrhistogram percentiles; then messages/s with
//! many requests in flight on the local socket.
//!
//! ```text
//! cargo build --release -p hyphae-router -p hyphae-bench
//! target/release/msgbench
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::Parser;
use hdrhistogram::Histogram;
use hyphae_bench::{App, free_port, responder, router_args};
use hyphae_wire::framing::{Destination, Message, Push};
use hyphae_wire::identity::{PublicKey, SecretKey};

#[derive(Parser, Debug)]
struct Args {
    /// The router binary (default: `hyphae-router` next to this one).
    #[arg(long)]
    router: Option<PathBuf>,
    /// Router I/O driver.
    #[arg(long, default_value = "uring")]
    driver: String,
    /// Round trips per size and path.
    #[arg(long, default_value_t = 300)]
    rounds: usize,
    /// Requests in flight for the throughput run.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Seconds of the throughput run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

const TOPIC: &[u8] = b"bench";

struct Router {
    child: Child,
    api: SocketAddr,
    sock: PathBuf,
    port: u16,
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(
    bin: &Path,
    dir: &Path,
    name: &str,
    seed: u8,
    driver: &str,
    peer: Option<u16>,
) -> Result<Router> {
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&key, [seed; 32])?;
    let (port, api) = (free_port()?, free_port()?);
    let sock = key.with_extension("sock");
    let mut cmd = Command::new(bin);
    router_args(&mut cmd, &key, port, api, driver, 1);
    if let Some(p) = peer {
        cmd.args(["--peers", &format!("tcp://127.0.0.1:{p}")]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let r = Router {
        child,
        api: format!("127.0.0.1:{api}").parse()?,
        sock,
        port,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&r.sock).is_err() || TcpStream::connect(r.api).is_err() {
        if Instant::now() > deadline {
            bail!("{name} did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(r)
}

fn push(app: &mut App, tag: u64, dst: &PublicKey, payload: &[u8]) -> Result<()> {
    let p = Push {
        tag,
        dst: Destination::PublicKey(*dst.as_bytes()),
        topic: TOPIC,
        payload,
        reply_to: None,
        reply_timeout_ms: Some(30_000),
    };
    app.send(&Message::Push(p))
}

/// Waits for the reply to a push; returns its tag.
fn reply(app: &mut App) -> Result<u64> {
    loop {
        let (kind, body) = app.recv()?;
        match Message::decode(kind, &body) {
            Ok(Message::Deliver(d)) if d.reply_tag.is_some() => {
                return Ok(d.reply_tag.unwrap_or_default());
            }
            Ok(Message::Error(e)) => bail!("push failed: {}", e.message),
            _ => {}
        }
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap_or_else(|_| unreachable!())
}

fn http_push(api: SocketAddr, body: &str) -> Result<u16> {
    let mut s = TcpStream::connect(api)?;
    s.set_nodelay(true)?;
    let req = format!(
        "POST /api/v1/messages?reply_timeout=30 HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    Ok(text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

struct Row {
    path: &'static str,
    size: usize,
    h: Histogram<u64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bin = match &args.router {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("hyphae-router"),
    };
    let dir = std::env::temp_dir().join(format!("hyphae-msgbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let b = start(&bin, &dir, "b", 0x62, &args.driver, None)?;
    let a = start(&bin, &dir, "a", 0x61, &args.driver, Some(b.port))?;
    let b_pk = SecretKey::from_bytes([0x62; 32]).public_key();
    let sock = b.sock.clone();
    std::thread::spawn(move || responder(&sock, TOPIC));

    let mut client = App::connect(&a.sock)?;
    // Warm up: routes, keys, RTT estimates.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        push(&mut client, 0, &b_pk, b"warm")?;
        if reply(&mut client).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("no reply through the routers");
        }
    }
    let mut rows = Vec::new();
    for size in [1024usize, 200 * 1024] {
        let payload = vec![0x5au8; size];
        let mut h = hist();
        for i in 0..args.rounds {
            let t = Instant::now();
            push(&mut client, i as u64 + 1, &b_pk, &payload)?;
            reply(&mut client)?;
            h.record(t.elapsed().as_nanos() as u64)?;
        }
        rows.push(Row {
            path: "local socket",
            size,
            h,
        });

        let body = serde_json::json!({
            "dst": {"pk": b_pk.to_string()},
            "topic": base64::engine::general_purpose::STANDARD.encode(TOPIC),
            "payload": base64::engine::general_purpose::STANDARD.encode(&payload),
        })
        .to_string();
        let mut h = hist();
        for _ in 0..args.rounds {
            let t = Instant::now();
            let code = http_push(a.api, &body)?;
            if code != 200 {
                bail!("HTTP push answered {code}");
            }
            h.record(t.elapsed().as_nanos() as u64)?;
        }
        rows.push(Row {
            path: "HTTP API",
            size,
            h,
        });
    }
    for r in &rows {
        let us = |q: f64| r.h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "round trip, {:<12} {:>7} B: p50 {:>8.1} us  p90 {:>8.1} us  p99 {:>8.1} us  max {:>8.1} us  ({} rounds)",
            r.path,
            r.size,
            us(0.5),
            us(0.9),
            us(0.99),
            r.h.max() as f64 / 1000.0,
            r.h.len()
        );
    }

    // Throughput: keep `in_flight` 1 KB requests outstanding.
    let payload = vec![0x33u8; 1024];
    let mut tag = 1_000_000u64;
    for _ in 0..args.in_flight {
        tag += 1;
        push(&mut client, tag, &b_pk, &payload)?;
    }
    let t0 = Instant::now();
    let mut done = 0u64;
    while t0.elapsed().as_secs_f64() < args.seconds {
        reply(&mut client)?;
        done += 1;
        tag += 1;
        push(&mut client, tag, &b_pk, &payload)?;
    }
    let rate = done as f64 / t0.elapsed().as_secs_f64();
    println!(
        "throughput, local socket, 1024 B, {} in flight: {rate:.0} request/reply pairs/s",
        args.in_flight
    );

    if let Some(path) = &args.json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                let curve: Vec<(f64, f64)> = [0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0]
                    .iter()
                    .map(|q| (*q, r.h.value_at_quantile(*q) as f64 / 1000.0))
                    .collect();
                serde_json::json!({"path": r.path, "size": r.size,
                    "p50_us": r.h.value_at_quantile(0.5) as f64 / 1000.0,
                    "p99_us": r.h.value_at_quantile(0.99) as f64 / 1000.0,
                    "max_us": r.h.max() as f64 / 1000.0, "curve": curve})
            })
            .collect();
        let doc = serde_json::json!({"driver": args.driver, "round_trips": v, "pairs_per_s": rate, "in_flight": args.in_flight});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
