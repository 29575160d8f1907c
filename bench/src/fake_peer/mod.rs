//! Fake Mycelium peers for load generators: a peer link over TCP or QUIC (either side may dial)
//! that announces a set of /64s, answers the router's Hellos and Route Requests, counts the data
//! frames it receives, and streams data frames from a generator.
//!
//! ```text
//!   generator ──frames──▶ [sender peer] ══link══▶ router under test ══link══▶ [sink peer] ─▶ counters
//! ```
//!
//! Every peer is both: it counts what it receives and has an idle generator. The links speak
//! the reference's protocol (`../shared/WIRE.md`): on TCP, frames back to back; on QUIC, control
//! frames on the one bidirectional stream the dialer opens and data frames as datagrams, or on
//! the stream when a frame is larger than the link's datagram size (as hyphae does; the
//! reference tears the link down instead).
//!
//! Nothing received from the router is trusted: malformed framing closes the link and is
//! counted, and every wait (a write the router does not take, a link that does not come back)
//! ends after a timeout with an error rather than hanging the benchmark.

pub mod quic;
pub mod tcp;

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;
use hyphae_wire::babel::{Ihu, Tlv, Update};
use hyphae_wire::data::DataHeader;
use hyphae_wire::identity::{PublicKey, SecretKey};
use hyphae_wire::{Interval, Metric, RouterId, SeqNo, Subnet};

/// First 8 body bytes of a measured data frame.
pub const DATA_MAGIC: u64 = 0x6879_7068_6165_6d78;
/// First 8 body bytes of a route probe; the next 4 are the destination's index.
pub const PROBE_MAGIC: u64 = 0x6879_7068_6165_7072;
/// How long a write may wait for the router to take it, and a lost link to come back.
pub const STALL: Duration = Duration::from_secs(10);
/// Bytes per TCP write of the generator (as `transit` writes).
pub const WRITE_BYTES: usize = 256 * 1024;

/// The /64s one fake peer announces, one key each: every Update's router id must hold the key
/// whose address lies in the prefix (the `RouterIdOwnsSubnet` filter of the reference and of
/// hyphae), so each /64 gets its own key.
#[derive(Debug)]
pub struct Prefixes {
    tag: u8,
    keys: Vec<PublicKey>,
    /// Every Update frame, back to back: what the peer sends first on a new link.
    announcement: Bytes,
    /// Each prefix's Update frame, to answer Route Requests.
    updates: HashMap<Subnet, Bytes>,
}

impl Prefixes {
    /// `n` (at least 1) keys derived from `tag`; the first is the peer's own. The Updates are
    /// the ones `transit` and the router tests' `FakePeer` send: metric 0, seqno 0, interval
    /// 300 s, a /64 each.
    pub fn new(tag: u8, n: usize) -> Self {
        let n = n.max(1);
        // x25519 base multiplications are slow in debug builds: both vCPUs share the work.
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(4);
        let per = n.div_ceil(threads);
        let keys: Vec<PublicKey> = std::thread::scope(|s| {
            let parts: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || {
                        (t * per..n.min((t + 1) * per))
                            .map(|i| key(tag, i))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let mut announcement = Vec::with_capacity(keys.len() * 68);
        let mut updates = HashMap::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            let mut v = Vec::with_capacity(68);
            Tlv::Update(update(tag, i, k, SeqNo(0), Metric(0))).encode_frame(&mut v);
            announcement.extend_from_slice(&v);
            updates.insert(k.subnet(), Bytes::from(v));
        }
        Self {
            tag,
            keys,
            announcement: announcement.into(),
            updates,
        }
    }

    /// How many /64s.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never: there is always the peer's own /64.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The address of key `i` (inside its /64).
    pub fn address(&self, i: usize) -> Ipv6Addr {
        self.keys[i % self.keys.len()].address()
    }

    /// Key `i` (modulo their number).
    pub fn key(&self, i: usize) -> PublicKey {
        self.keys[i % self.keys.len()]
    }

    /// Every Update, back to back.
    pub fn announcement(&self) -> Bytes {
        self.announcement.clone()
    }

    /// Every Update again, with `seqno` and `metric` ([`Metric::INFINITE`]: a retraction of
    /// every prefix), back to back: to send with [`Peer::send_control`].
    pub fn updates(&self, seqno: SeqNo, metric: Metric) -> Bytes {
        let mut v = Vec::with_capacity(self.announcement.len());
        for (i, k) in self.keys.iter().enumerate() {
            Tlv::Update(update(self.tag, i, k, seqno, metric)).encode_frame(&mut v);
        }
        v.into()
    }

    /// The answer to a control frame from the router, if any: an IHU for a Hello, our Updates
    /// for a Route Request that asks for them.
    fn answer(&self, tlv: &Tlv) -> Option<Bytes> {
        match tlv {
            Tlv::Hello(_) => {
                let mut v = Vec::with_capacity(16);
                Tlv::Ihu(Ihu {
                    rx_cost: Metric(10),
                    interval: Interval(6000),
                    address: None,
                })
                .encode_frame(&mut v);
                Some(v.into())
            }
            Tlv::RouteRequest(r) => match r.prefix {
                None => Some(self.announcement()),
                Some(p) => self.updates.get(&p).cloned(),
            },
            _ => None,
        }
    }
}

fn key(tag: u8, i: usize) -> PublicKey {
    let mut b = [tag; 32];
    b[1..9].copy_from_slice(&(i as u64).to_le_bytes());
    SecretKey::from_bytes(b).public_key()
}

fn update(tag: u8, i: usize, k: &PublicKey, seqno: SeqNo, metric: Metric) -> Update {
    let i = (i as u32).to_le_bytes();
    Update {
        flags: 0,
        interval: Interval::from_secs(300),
        seqno,
        metric,
        subnet: k.subnet(),
        router_id: RouterId::new(k, 0, [tag, i[0], i[1], i[2], i[3], 0x6d]),
    }
}

/// What one fake peer has seen, shared with the threads that serve its links.
#[derive(Debug)]
pub struct Counters {
    /// Data frames received (on datagrams and streams).
    pub frames: AtomicU64,
    /// Their bytes, whole frames (outer header included), as `transit` counts them.
    pub bytes: AtomicU64,
    /// Data frames that came on a stream (QUIC: too large for a datagram).
    pub stream_frames: AtomicU64,
    /// Control frames received.
    pub control: AtomicU64,
    /// Links that came up.
    pub links_up: AtomicU64,
    /// Links that went down (closed by the router, reset, or broken framing).
    pub links_down: AtomicU64,
    /// Distinct probes seen since [`Counters::reset_probes`].
    pub probes_seen: AtomicU64,
    probes: Vec<AtomicBool>,
    /// Why links went down, the first thousand.
    closes: Mutex<Vec<String>>,
    /// Remote ports of the links, as the router sees our end: our listening port, or the local
    /// port we dialed from.
    ports: Mutex<Vec<u16>>,
}

impl Counters {
    fn new(probes: usize) -> Self {
        Self {
            frames: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            stream_frames: AtomicU64::new(0),
            control: AtomicU64::new(0),
            links_up: AtomicU64::new(0),
            links_down: AtomicU64::new(0),
            probes_seen: AtomicU64::new(0),
            probes: (0..probes).map(|_| AtomicBool::new(false)).collect(),
            closes: Mutex::new(Vec::new()),
            ports: Mutex::new(Vec::new()),
        }
    }

    /// Forgets the probes seen so far.
    pub fn reset_probes(&self) {
        for p in &self.probes {
            p.store(false, Relaxed);
        }
        self.probes_seen.store(0, Relaxed);
    }

    /// How many probes can be told apart: one per announced /64.
    pub fn probes_count(&self) -> usize {
        self.probes.len()
    }

    /// Whether probe `i` arrived since [`Counters::reset_probes`].
    pub fn probe_seen(&self, i: usize) -> bool {
        self.probes.get(i).is_some_and(|p| p.load(Relaxed))
    }

    /// Reasons links went down, in order (the first thousand are kept).
    pub fn closes(&self) -> Vec<String> {
        self.closes.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Our ports as the router sees them, one per link so far.
    pub fn ports(&self) -> Vec<u16> {
        self.ports.lock().map(|p| p.clone()).unwrap_or_default()
    }

    fn link_up(&self, port: u16) {
        self.links_up.fetch_add(1, Relaxed);
        if let Ok(mut p) = self.ports.lock() {
            p.push(port);
        }
    }

    fn link_down(&self, why: String) {
        self.links_down.fetch_add(1, Relaxed);
        if let Ok(mut c) = self.closes.lock()
            && c.len() < 1000
        {
            c.push(why);
        }
    }

    /// Counts one received data frame (`frame` is all of it) and notes a probe.
    fn data(&self, frame: &[u8], body: &[u8]) {
        self.frames.fetch_add(1, Relaxed);
        self.bytes.fetch_add(frame.len() as u64, Relaxed);
        self.probe(body);
    }

    fn probe(&self, body: &[u8]) {
        if body.get(..8) != Some(&PROBE_MAGIC.to_le_bytes()[..]) {
            return;
        }
        let Some(i) = body.get(8..12).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
            return;
        };
        if let Some(p) = self.probes.get(u32::from_le_bytes(i) as usize)
            && !p.swap(true, Relaxed)
        {
            self.probes_seen.fetch_add(1, Relaxed);
        }
    }
}

/// Data frames a generator cycles through: `count` frames of `frame_len` bytes back to back,
/// followed by the first frames again, so that any run of [`FrameSet::per_write`] frames
/// starting at a frame boundary is one contiguous slice.
#[derive(Debug)]
pub struct FrameSet {
    bytes: Bytes,
    frame_len: usize,
    count: usize,
    per_write: usize,
}

impl FrameSet {
    /// Frames from `src` to each of `dsts` in that order, `frame_len` bytes each (at least 52:
    /// 40 of headers and a 12-byte tag). Probes carry [`PROBE_MAGIC`] and the index in
    /// `probe_ids`; other frames carry [`DATA_MAGIC`].
    pub fn new(
        src: Ipv6Addr,
        dsts: &[Ipv6Addr],
        frame_len: usize,
        probe_ids: Option<&[u32]>,
    ) -> Result<Self> {
        if dsts.is_empty() {
            bail!("a frame set needs a destination");
        }
        if !(52..=40 + usize::from(u16::MAX)).contains(&frame_len) {
            bail!("frame length {frame_len} out of range (52..=65575)");
        }
        let per_write = (WRITE_BYTES / frame_len).max(1);
        let count = dsts.len();
        let mut v = Vec::with_capacity((count + per_write) * frame_len);
        let mut body = vec![0u8; frame_len - 40];
        for j in 0..count + per_write {
            let i = j % count;
            let (magic, id) = match probe_ids {
                Some(ids) => (PROBE_MAGIC, ids.get(i).copied().unwrap_or(u32::MAX)),
                None => (DATA_MAGIC, i as u32),
            };
            body[..8].copy_from_slice(&magic.to_le_bytes());
            body[8..12].copy_from_slice(&id.to_le_bytes());
            DataHeader {
                hop_limit: 64,
                src,
                dst: dsts[i],
            }
            .emit_frame(&body, &mut v)
            .map_err(|e| anyhow!("encoding a data frame: {e}"))?;
        }
        Ok(Self {
            bytes: v.into(),
            frame_len,
            count,
            per_write,
        })
    }

    /// Frames in one cycle.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Bytes per frame.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Frames per TCP write.
    pub fn per_write(&self) -> usize {
        self.per_write
    }

    /// Frame `i` of the cycle (modulo its length).
    pub fn frame(&self, i: usize) -> Bytes {
        let s = (i % self.count) * self.frame_len;
        self.bytes.slice(s..s + self.frame_len)
    }

    /// `n` (at most [`FrameSet::per_write`]) frames from frame `i` of the cycle on, as one slice.
    pub fn run(&self, i: usize, n: usize) -> &[u8] {
        let s = (i % self.count) * self.frame_len;
        &self.bytes[s..s + n.min(self.per_write) * self.frame_len]
    }
}

/// A job for a generator.
#[derive(Debug)]
struct Job {
    frames: Arc<FrameSet>,
    /// Cycle until stopped; otherwise send each frame once.
    repeat: bool,
}

/// What a generator did in one job.
#[derive(Debug, Clone, Default)]
pub struct GenReport {
    /// Frames handed to the link (the kernel's socket, or quinn).
    pub sent: u64,
    /// Of those, frames sent on the QUIC stream because they were larger than a datagram.
    pub on_stream: u64,
    /// Times the link was lost during the job and the generator went on over a new one.
    pub relinks: u64,
    /// Why the job ended early.
    pub error: Option<String>,
}

/// The main thread's handle on a peer's generator (a thread for TCP, a task for QUIC).
#[derive(Debug)]
pub struct Generator {
    jobs: JobQueue,
    running: Arc<AtomicBool>,
    done: mpsc::Receiver<GenReport>,
}

#[derive(Debug)]
enum JobQueue {
    Thread(mpsc::Sender<Job>),
    Task(tokio::sync::mpsc::UnboundedSender<Job>),
}

impl Generator {
    /// Starts cycling through `frames` until [`Generator::stop`].
    pub fn start(&self, frames: Arc<FrameSet>) -> Result<()> {
        self.submit(Job {
            frames,
            repeat: true,
        })
    }

    /// Stops a job started with [`Generator::start`] and reports it; an error if the
    /// generator does not answer within `limit`.
    pub fn stop(&self, limit: Duration) -> Result<GenReport> {
        self.running.store(false, Relaxed);
        self.done
            .recv_timeout(limit)
            .map_err(|_| anyhow!("the generator did not stop within {limit:?}"))
    }

    /// Sends each frame of `frames` once; an error if that takes longer than `limit`.
    pub fn send_once(&self, frames: Arc<FrameSet>, limit: Duration) -> Result<GenReport> {
        let n = frames.count();
        self.submit(Job {
            frames,
            repeat: false,
        })?;
        match self.done.recv_timeout(limit) {
            Ok(r) => Ok(r),
            Err(_) => {
                self.running.store(false, Relaxed);
                let _ = self.done.recv_timeout(STALL + Duration::from_secs(1));
                bail!("sending {n} frames once took longer than {limit:?}")
            }
        }
    }

    fn submit(&self, job: Job) -> Result<()> {
        // A report left over from a job that timed out is stale.
        while self.done.try_recv().is_ok() {}
        self.running.store(true, Relaxed);
        let ok = match &self.jobs {
            JobQueue::Thread(q) => q.send(job).is_ok(),
            JobQueue::Task(q) => q.send(job).is_ok(),
        };
        if !ok {
            bail!("the generator is gone");
        }
        Ok(())
    }
}

/// A fake peer: what the benchmark reads from it and drives, whatever the link.
#[derive(Debug)]
pub struct Peer {
    /// What it received.
    pub counters: Arc<Counters>,
    /// Its generator.
    pub generator: Generator,
    /// The port it listens on (when the router dials it).
    pub listen_port: Option<u16>,
    /// Stops its threads when dropped.
    transport: Transport,
}

#[derive(Debug)]
enum Transport {
    /// Held for its `Drop`.
    Tcp {
        _guard: tcp::Guard,
    },
    Quic(quic::Guard),
}

impl Peer {
    /// TCP links only: the peer stops reading its link and answering the router, and sends
    /// nothing more, but keeps the link open until it is dropped: a frozen peer, which the
    /// router should find dead (no IHU) and close.
    pub fn freeze(&self) -> Result<()> {
        match &self.transport {
            Transport::Tcp { _guard: g } => {
                g.freeze();
                Ok(())
            }
            Transport::Quic(_) => bail!("only TCP peers freeze"),
        }
    }

    /// TCP links only: writes `frames` (whole frames, such as [`Prefixes::updates`]) on the
    /// current link; an error if there is none or the router takes nothing for [`STALL`].
    pub fn send_control(&self, frames: &[u8]) -> Result<()> {
        match &self.transport {
            Transport::Tcp { _guard: g } => g.send(frames),
            Transport::Quic(_) => bail!("only TCP peers send raw frames"),
        }
    }

    /// QUIC links only: (DATAGRAM frames, UDP datagrams) the peer's QUIC stack received, and
    /// packets it lost as a sender, summed over its connections so far. Datagram frames beyond
    /// the data frames counted were dropped in the peer itself (its receive buffer was full).
    pub fn quic_stats(&self) -> Option<QuicStats> {
        match &self.transport {
            Transport::Tcp { .. } => None,
            Transport::Quic(g) => Some(g.stats()),
        }
    }
}

/// Counters of a fake peer's QUIC connections, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuicStats {
    /// DATAGRAM frames received.
    pub datagram_frames_rx: u64,
    /// DATAGRAM frames sent.
    pub datagram_frames_tx: u64,
    /// UDP datagrams received.
    pub udp_rx: u64,
    /// Packets this side declared lost.
    pub lost_packets: u64,
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use bytes::BytesMut;
    use hyphae_wire::babel::{Hello, RouteRequest};
    use hyphae_wire::deframer::{Deframer, Frame};

    use super::*;

    fn frames_in(bytes: &[u8]) -> Vec<Frame<BytesMut>> {
        let mut buf = BytesMut::from(bytes);
        let mut d = Deframer::new();
        let mut v = Vec::new();
        while let Ok(Some(f)) = d.next_frame(&mut buf) {
            v.push(f);
        }
        assert!(buf.is_empty(), "whole frames only");
        v
    }

    #[test]
    fn prefixes_announce_one_owned_64_each() {
        let p = Prefixes::new(9, 5);
        let updates: Vec<Update> = frames_in(&p.announcement())
            .into_iter()
            .filter_map(|f| match f {
                Frame::Control(Tlv::Update(u)) => Some(u),
                _ => None,
            })
            .collect();
        assert_eq!(updates.len(), 5);
        for (i, u) in updates.iter().enumerate() {
            assert_eq!(u.subnet, Subnet::v6_64(p.address(i)));
            assert_eq!(u.router_id.public_key().address(), p.address(i));
            assert_eq!((u.metric, u.seqno), (Metric(0), SeqNo(0)));
        }
    }

    #[test]
    fn updates_carry_the_seqno_and_metric_asked_for() {
        let p = Prefixes::new(9, 3);
        let frames = frames_in(&p.updates(SeqNo(7), Metric::INFINITE));
        assert_eq!(frames.len(), 3);
        for (i, f) in frames.iter().enumerate() {
            let Frame::Control(Tlv::Update(u)) = f else {
                panic!("an Update");
            };
            assert_eq!(u.subnet, Subnet::v6_64(p.address(i)));
            assert_eq!((u.seqno, u.metric), (SeqNo(7), Metric::INFINITE));
        }
        assert_eq!(p.updates(SeqNo(0), Metric(0)), p.announcement());
        assert_eq!(p.key(4), p.key(1));
    }

    #[test]
    fn answers_hellos_and_route_requests_for_own_prefixes_only() {
        let p = Prefixes::new(9, 3);
        let hello = Tlv::Hello(Hello::unicast(SeqNo(1), Interval(2000)));
        let ihu = p.answer(&hello).map(|b| frames_in(&b));
        assert!(matches!(
            ihu.as_deref(),
            Some([Frame::Control(Tlv::Ihu(_))])
        ));
        let ask = |prefix| {
            p.answer(&Tlv::RouteRequest(RouteRequest {
                generation: 0,
                prefix,
            }))
            .map(|b| frames_in(&b).len())
        };
        assert_eq!(ask(Some(Subnet::v6_64(p.address(2)))), Some(1));
        assert_eq!(ask(None), Some(3));
        let other = Prefixes::new(10, 1).address(0);
        assert_eq!(ask(Some(Subnet::v6_64(other))), None);
    }

    #[test]
    fn frame_set_runs_wrap_around_at_frame_boundaries() {
        let dsts: Vec<Ipv6Addr> = (1..=3u16)
            .map(|i| Ipv6Addr::new(0x4a9, 0, 0, 0, 0, 0, 0, i))
            .collect();
        let set = FrameSet::new("4a9::100".parse().unwrap(), &dsts, 5000, None).unwrap();
        assert_eq!((set.count(), set.per_write()), (3, WRITE_BYTES / 5000));
        let dst = |f: &Frame<BytesMut>| match f {
            Frame::Data(d) => d.dst(),
            _ => panic!("a data frame"),
        };
        let run = frames_in(set.run(2, 4));
        assert_eq!(run.len(), 4);
        let got: Vec<Ipv6Addr> = run.iter().map(dst).collect();
        assert_eq!(got, vec![dsts[2], dsts[0], dsts[1], dsts[2]]);
        assert_eq!(set.frame(4), set.frame(1));
        assert_eq!(set.frame(0).len(), 5000);
        assert!(FrameSet::new(dsts[0], &dsts, 40, None).is_err());
    }

    #[test]
    fn probes_are_counted_once_each() {
        let c = Counters::new(4);
        let set = FrameSet::new(
            "4a9::1".parse().unwrap(),
            &["4a9::2".parse().unwrap(); 3],
            296,
            Some(&[1, 3, 1]),
        )
        .unwrap();
        for i in 0..3 {
            let f = set.frame(i);
            c.data(&f, &f[40..]);
        }
        assert_eq!(c.frames.load(Relaxed), 3);
        assert_eq!(c.bytes.load(Relaxed), 3 * 296);
        assert_eq!(c.probes_seen.load(Relaxed), 2);
        assert!(c.probe_seen(1) && c.probe_seen(3) && !c.probe_seen(0));
        c.reset_probes();
        assert!(!c.probe_seen(1));
    }

    /// Two fake peers linked to each other, no router: the dialer's generator reaches the
    /// listener's counters, and each learns the other's prefixes.
    fn back_to_back(
        listen: fn(Arc<Prefixes>) -> Result<Peer>,
        dial: fn(Arc<Prefixes>, SocketAddr) -> Result<Peer>,
        frame_len: usize,
    ) {
        let (a, b) = (Arc::new(Prefixes::new(1, 1)), Arc::new(Prefixes::new(2, 4)));
        let sink = listen(b.clone()).unwrap();
        let port = sink.listen_port.unwrap();
        let sender = dial(a.clone(), SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
        let dsts: Vec<Ipv6Addr> = (0..4).map(|i| b.address(i)).collect();
        let set =
            Arc::new(FrameSet::new(a.address(0), &dsts, frame_len, Some(&[0, 1, 2, 3])).unwrap());
        let r = sender.generator.send_once(set, STALL * 2).unwrap();
        assert_eq!((r.sent, r.error), (4, None));
        let on_stream = if frame_len > 1500 { 4 } else { 0 };
        assert_eq!(r.on_stream, on_stream);
        let deadline = Instant::now() + STALL;
        while sink.counters.probes_seen.load(Relaxed) < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(sink.counters.probes_seen.load(Relaxed), 4);
        assert_eq!(sink.counters.frames.load(Relaxed), 4);
        assert_eq!(sink.counters.stream_frames.load(Relaxed), on_stream);
        // Each side announced itself first: 4 Updates reached the sender, 1 the sink.
        while sender.counters.control.load(Relaxed) < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(sender.counters.control.load(Relaxed), 4);
        assert_eq!(sink.counters.control.load(Relaxed), 1);
    }

    #[test]
    fn tcp_peers_back_to_back() {
        back_to_back(tcp::listen, tcp::dial, 296);
    }

    #[test]
    fn quic_peers_back_to_back_datagrams_and_stream() {
        back_to_back(quic::listen, quic::dial, 296);
        // Larger than any datagram: on the stream.
        back_to_back(quic::listen, quic::dial, 3000);
    }
}
