//! A fake peer over TCP: frames back to back on one connection, in both directions.
//!
//! Threads: one accepts (or dials and redials), one reads each link (counting data frames,
//! answering control frames), one generates. Writes to a link go through one lock, so the
//! generator's writes and the reader's answers never interleave inside a frame.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::BytesMut;
use hyphae_wire::deframer::{Deframer, Frame};

use super::{
    Counters, GenReport, Generator, Job, JobQueue, Peer, Prefixes, STALL, Transport, WRITE_BYTES,
};
use crate::sys::{connect_from, set_int_opt};

/// Stops a TCP peer's threads and closes its link when dropped.
#[derive(Debug)]
pub(super) struct Guard(Arc<Shared>);

impl Guard {
    /// Stop reading and answering; the link stays open.
    pub(super) fn freeze(&self) {
        self.0.frozen.store(true, Relaxed);
    }

    /// Writes whole frames on the current link.
    pub(super) fn send(&self, frames: &[u8]) -> Result<()> {
        let mut cur = self
            .0
            .writer
            .lock()
            .map_err(|_| anyhow::anyhow!("link lock poisoned"))?;
        let (_, w) = cur.as_mut().context("no link")?;
        if let Err(e) = w.write_all(frames) {
            // Half a frame may be on the link: it is useless now.
            let _ = w.shutdown(Shutdown::Both);
            *cur = None;
            return Err(e).context("writing on the link");
        }
        Ok(())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.stop.store(true, Relaxed);
        if let Ok(mut w) = self.0.writer.lock()
            && let Some((_, s)) = w.take()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

#[derive(Debug)]
struct Shared {
    prefixes: Arc<Prefixes>,
    counters: Arc<Counters>,
    /// The current link's write half, with the link's number.
    writer: Mutex<Option<(u64, TcpStream)>>,
    next_link: AtomicU64,
    stop: AtomicBool,
    /// Frozen: the links are neither read nor answered (see [`super::Peer::freeze`]).
    frozen: AtomicBool,
}

/// A peer listening on a loopback port for the router to dial.
pub fn listen(prefixes: Arc<Prefixes>) -> Result<Peer> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    l.set_nonblocking(true)?;
    let shared = new_shared(prefixes);
    let s = shared.clone();
    std::thread::Builder::new()
        .name("fake-tcp-accept".into())
        .spawn(move || {
            while !s.stop.load(Relaxed) {
                match l.accept() {
                    Ok((stream, _)) => attach(&s, stream, port),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })?;
    finish(shared, Some(port))
}

/// A peer that dials `to` (the router's TCP port), and dials again whenever its link is down.
pub fn dial(prefixes: Arc<Prefixes>, to: SocketAddr) -> Result<Peer> {
    dial_from(prefixes, to, None)
}

/// As [`dial`], from source address `from` when given (any of 127.0.0.0/8 on Linux: many peers
/// on one host, each from its own address, as the router's per-address cap expects).
pub fn dial_from(prefixes: Arc<Prefixes>, to: SocketAddr, from: Option<IpAddr>) -> Result<Peer> {
    let shared = new_shared(prefixes);
    let s = shared.clone();
    std::thread::Builder::new()
        .name("fake-tcp-dial".into())
        .spawn(move || {
            while !s.stop.load(Relaxed) {
                let up = s.writer.lock().map(|w| w.is_some()).unwrap_or(true);
                if !up && !s.frozen.load(Relaxed) {
                    let limit = Duration::from_secs(2);
                    let connected = match from {
                        Some(ip) => connect_from(ip, to, limit),
                        None => TcpStream::connect_timeout(&to, limit),
                    };
                    if let Ok(stream) = connected {
                        let port = stream.local_addr().map_or(0, |a| a.port());
                        attach(&s, stream, port);
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })?;
    finish(shared, None)
}

fn new_shared(prefixes: Arc<Prefixes>) -> Arc<Shared> {
    Arc::new(Shared {
        counters: Arc::new(Counters::new(prefixes.len())),
        prefixes,
        writer: Mutex::new(None),
        next_link: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        frozen: AtomicBool::new(false),
    })
}

fn finish(shared: Arc<Shared>, listen_port: Option<u16>) -> Result<Peer> {
    let (jobs, job_rx) = mpsc::channel::<Job>();
    let (done_tx, done) = mpsc::channel();
    let running = Arc::new(AtomicBool::new(false));
    let (s, r) = (shared.clone(), running.clone());
    std::thread::Builder::new()
        .name("fake-tcp-gen".into())
        .spawn(move || {
            for job in job_rx {
                if done_tx.send(generate(&s, &job, &r)).is_err() {
                    return;
                }
            }
        })?;
    Ok(Peer {
        counters: shared.counters.clone(),
        generator: Generator {
            jobs: JobQueue::Thread(jobs),
            running,
            done,
        },
        listen_port,
        transport: Transport::Tcp {
            _guard: Guard(shared),
        },
    })
}

/// Starts serving a new link: announces our prefixes, makes it the link the generator writes
/// to, and starts its reader.
fn attach(s: &Arc<Shared>, stream: TcpStream, port: u16) {
    let setup = || -> std::io::Result<TcpStream> {
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(STALL))?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        // Behave like a hyphae peer (and `transit`'s fake peers): a short unsent backlog.
        set_int_opt(
            &stream,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            128 * 1024,
        );
        let mut w = stream.try_clone()?;
        w.write_all(&s.prefixes.announcement())?;
        Ok(w)
    };
    let w = match setup() {
        Ok(w) => w,
        Err(e) => {
            s.counters.link_down(format!("setting up a link: {e}"));
            return;
        }
    };
    let id = s.next_link.fetch_add(1, Relaxed);
    if let Ok(mut cur) = s.writer.lock()
        && let Some((_, old)) = cur.replace((id, w))
    {
        let _ = old.shutdown(Shutdown::Both);
    }
    s.counters.link_up(port);
    let s = s.clone();
    let spawned = std::thread::Builder::new()
        .name("fake-tcp-read".into())
        .spawn(move || read_link(&s, stream, id));
    if let Err(e) = spawned {
        eprintln!("fake peer: no reader thread: {e}");
    }
}

/// Reads one link until it closes: counts data frames, answers control frames.
fn read_link(s: &Shared, mut stream: TcpStream, id: u64) {
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut chunk = vec![0u8; WRITE_BYTES];
    let mut d = Deframer::new();
    let why = loop {
        if s.stop.load(Relaxed) {
            break "stopped".to_owned();
        }
        if s.frozen.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) => break "closed by the router".to_owned(),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => break format!("read: {e}"),
        };
        buf.extend_from_slice(&chunk[..n]);
        let (mut frames, mut bytes) = (0, 0);
        let bad = loop {
            match d.next_frame(&mut buf) {
                Ok(None) => break None,
                Ok(Some(Frame::Data(f))) => {
                    frames += 1;
                    bytes += f.as_bytes().len() as u64;
                    s.counters.probe(f.body());
                }
                Ok(Some(Frame::Control(tlv))) => {
                    s.counters.control.fetch_add(1, Relaxed);
                    if let Some(answer) = s.prefixes.answer(&tlv) {
                        write_if_current(s, id, &answer);
                    }
                }
                Ok(Some(Frame::Skipped(_))) => {
                    s.counters.control.fetch_add(1, Relaxed);
                }
                Err(e) => break Some(format!("broken framing from the router: {e}")),
            }
        };
        s.counters.frames.fetch_add(frames, Relaxed);
        s.counters.bytes.fetch_add(bytes, Relaxed);
        if let Some(why) = bad {
            break why;
        }
    };
    let _ = stream.shutdown(Shutdown::Both);
    if let Ok(mut cur) = s.writer.lock()
        && cur.as_ref().is_some_and(|(i, _)| *i == id)
    {
        *cur = None;
    }
    if !s.stop.load(Relaxed) {
        s.counters.link_down(why);
    }
}

fn write_if_current(s: &Shared, id: u64, bytes: &[u8]) {
    if let Ok(mut cur) = s.writer.lock()
        && let Some((i, w)) = cur.as_mut()
        && *i == id
        && w.write_all(bytes).is_err()
    {
        let _ = w.shutdown(Shutdown::Both);
    }
}

/// Runs one job on whatever link is current, waiting up to [`STALL`] for one.
fn generate(s: &Shared, job: &Job, running: &AtomicBool) -> GenReport {
    let mut r = GenReport::default();
    let (n, k) = (job.frames.count(), job.frames.per_write());
    let mut i = 0usize;
    let mut lost_at: Option<Instant> = None;
    loop {
        let take = if job.repeat {
            if !running.load(Relaxed) {
                break;
            }
            k
        } else if i >= n {
            break;
        } else {
            k.min(n - i)
        };
        let Ok(mut cur) = s.writer.lock() else {
            r.error = Some("link lock poisoned".into());
            break;
        };
        let Some((_, w)) = cur.as_mut() else {
            drop(cur);
            let since = *lost_at.get_or_insert_with(Instant::now);
            if since.elapsed() > STALL || !running.load(Relaxed) {
                r.error = Some(format!("no link for {STALL:?}"));
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if lost_at.take().is_some() {
            r.relinks += 1;
        }
        match w.write_all(job.frames.run(i, take)) {
            Ok(()) => {
                r.sent += take as u64;
                i = if job.repeat { (i + take) % n } else { i + take };
            }
            Err(e) => {
                // A write cut short leaves half a frame on the link: it is useless now.
                let _ = w.shutdown(Shutdown::Both);
                *cur = None;
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) {
                    r.error = Some(format!("the router took nothing for {STALL:?}"));
                    break;
                }
                lost_at = Some(Instant::now());
            }
        }
    }
    r
}
