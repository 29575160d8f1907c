//! The message subsystem under any packet sequence: node A (under test) gets forged packets
//! from three sources (INIT, CHUNK, DONE, ACKs, READ, ABORTED, raw datagrams, echoes of A's
//! own packets acknowledged), and exchanges real traffic with node B (a second `Messages`)
//! over a channel whose packets the fuzzer delivers, drops or duplicates. Both push messages,
//! abort them, mark them read and advance time.
//!
//! Invariants, after every step:
//! * no panic, and every queue drains (a bounded number of packets per step);
//! * a message A delivers from a forged source was fully received: its length and topic are
//!   those of an INIT that source sent since its last delivery, its payload hashes to the
//!   checksum of a DONE it sent, and it is exactly tiled by chunks `0..n` it sent (contiguous
//!   offsets, the same bytes);
//! * a message delivered over the A-B channel is exactly one the other side pushed with that
//!   id (same topic, payload, reply flag);
//! * an outbound message becomes `Received` only after its destination acknowledged a DONE with
//!   its checksum, `Read` only after a READ from its destination;
//! * state stays bounded: the `Debug` rendering of each node (every table, queue and timer
//!   in it) stays under a bound that follows from the small caps configured, and its timer
//!   heap under 128 entries, whatever the number of packets (a flood operation resets one
//!   message hundreds of times);
//! * two idle hours after the input, no timer is left and no outbound message is known.
#![no_main]

use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::{Result, Unstructured};
use bytes::Bytes;
use hyphae_proto::message::{Config, Event, Messages, State};
use hyphae_wire::identity::PublicKey;
use hyphae_wire::message::{MessageBody, MessageFlags, MessageId, MessagePacket};
use libfuzzer_sys::fuzz_target;

const SOURCES: usize = 3;
const IDS: u8 = 4;
/// Bound on the `Debug` rendering of one node: the caps below allow about 11 KB of payload and
/// chunks (at most 5 characters per byte), a few KB of topics and control packets, and a few
/// dozen records and timers (about 200 characters each); all that renders in well under this.
const MAX_DEBUG: usize = 160 << 10;
/// Bound on the timer heap's entries (live and stale): at most 4 outbound ids, 4 pending and 4
/// delivered inbound messages have a timer.
const MAX_TIMERS: usize = 128;
/// Packets one step may produce: ACKs are capped by the control queue, data by the in-flight
/// window times the outbound messages.
const MAX_PACKETS_PER_STEP: usize = 4096;

struct Keys {
    a: PublicKey,
    b: PublicKey,
    sources: [PublicKey; SOURCES],
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| Keys {
        a: PublicKey::from([0xa0; 32]),
        b: PublicKey::from([0xb0; 32]),
        sources: [1u8, 2, 3].map(|i| PublicKey::from([i; 32])),
    })
}

/// `FUZZ_TRACE=1` prints the A-B traffic and the pushes (to read a reproducer).
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

fn describe(p: &MessagePacket<'_>) -> String {
    let body = match p.body {
        MessageBody::Chunk {
            index,
            offset,
            data,
        } => format!(
            "Chunk {index} @{offset} len {} [{:02x}..]",
            data.len(),
            data.first().copied().unwrap_or(0)
        ),
        MessageBody::Done {
            chunk_count,
            checksum,
        } => format!(
            "Done {chunk_count} sum {:02x}{:02x}",
            checksum[0], checksum[1]
        ),
        other => format!("{other:?}"),
    };
    format!("{:?} flags {:04x} {body}", p.id, p.flags.0)
}

fn base() -> Instant {
    static B: OnceLock<Instant> = OnceLock::new();
    *B.get_or_init(Instant::now)
}

fn config(u: &mut Unstructured<'_>) -> Result<Config> {
    let mut c = Config::default();
    c.chunk_size = [500, 700, 1300][usize::from(u.int_in_range(0u8..=2)?)];
    c.send_window = Duration::from_secs(30);
    c.linger = Duration::from_secs(10);
    c.initial_rto = Duration::from_millis(100);
    c.min_rto = Duration::from_millis(5);
    c.max_rto = Duration::from_secs(1);
    c.max_message_size = 4000;
    c.max_outbound = 3;
    c.max_outbound_bytes = 6000;
    c.max_in_flight = u.int_in_range(1..=4)?;
    c.max_inbound = 4;
    c.max_inbound_per_source = 2;
    c.max_inbound_bytes = 5000;
    c.inbound_idle_timeout = Duration::from_secs(10);
    c.max_delivered_records = 4;
    c.max_rtt_entries = 2;
    c.pipelining = u.arbitrary()?;
    c.pipeline_window = u.int_in_range(1..=3)?;
    c.max_control_queue = 16;
    Ok(c)
}

fn id(u: &mut Unstructured<'_>) -> Result<MessageId> {
    let i = u.int_in_range(0..=IDS - 1)?;
    Ok(MessageId([i, 0, 0, 0, 0, 0, 0, i]))
}

/// Deterministic payload bytes: `len` bytes from a one-byte pattern.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i as u8).wrapping_mul(seed | 1)))
        .collect()
}

fn length(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=5)? {
        0 => 0,
        1 => u.int_in_range(1..=300)?,
        2 => u.int_in_range(1..=4000)?,
        3 => 250 * u.int_in_range(1..=16)?,
        4 => 500 * u.int_in_range(1..=8)? + u.int_in_range(0..=260)?,
        _ => u.arbitrary()?,
    })
}

/// What one forged source sent about one message id since its last delivery.
#[derive(Default)]
struct SentLog {
    inits: Vec<(u64, Vec<u8>, bool)>,
    chunks: Vec<(u64, u64, Vec<u8>)>,
    dones: Vec<(u64, [u8; 32])>,
}

impl SentLog {
    /// The payload the latest chunk per index would make, in index order, and the count.
    fn latest_payload(&self) -> (u64, Vec<u8>) {
        let mut by_index: Vec<(u64, u64, &[u8])> = Vec::new();
        for (i, o, d) in &self.chunks {
            match by_index.iter_mut().find(|c| c.0 == *i) {
                Some(c) => *c = (*i, *o, d),
                None => by_index.push((*i, *o, d)),
            }
        }
        by_index.sort_unstable_by_key(|c| c.0);
        let mut p = Vec::new();
        for (_, _, d) in &by_index {
            p.extend_from_slice(d);
        }
        (by_index.len() as u64, p)
    }

    /// Whether `payload` is exactly chunks 0..n sent, contiguous from offset 0.
    fn tiles(&self, payload: &[u8]) -> bool {
        // (offset reached, next index) pairs, breadth first.
        let mut reach = vec![(0u64, 0u64)];
        let mut seen = std::collections::HashSet::new();
        while let Some((off, idx)) = reach.pop() {
            if off == payload.len() as u64 && idx > 0 {
                return true;
            }
            for (i, o, d) in &self.chunks {
                if *i != idx || *o != off {
                    continue;
                }
                let end = off as usize + d.len();
                if end <= payload.len()
                    && payload[off as usize..end] == d[..]
                    && seen.insert((end as u64, idx + 1))
                {
                    reach.push((end as u64, idx + 1));
                }
            }
        }
        payload.is_empty()
    }
}

/// An outbound message as pushed.
#[derive(Clone)]
struct Pushed {
    dst: PublicKey,
    topic: Vec<u8>,
    payload: Vec<u8>,
    reply: bool,
    checksum: [u8; 32],
}

/// One node's view for the invariants.
#[derive(Default)]
struct Side {
    /// The message last pushed under each id (and every earlier one, for the receiver).
    pushed: HashMap<MessageId, Pushed>,
    history: HashMap<MessageId, Vec<Pushed>>,
    /// (source, id, checksum) of every DONE-ACK this node got.
    done_acks: Vec<(PublicKey, MessageId, [u8; 32])>,
    /// (source, id) of every READ this node got.
    reads: Vec<(PublicKey, MessageId)>,
}

impl Side {
    fn saw(&mut self, src: PublicKey, p: &MessagePacket<'_>) {
        if p.flags.contains(MessageFlags::ACK) {
            if let MessageBody::Done { checksum, .. } = p.body
                && self.done_acks.len() < 256
            {
                self.done_acks.push((src, p.id, checksum));
            }
        } else if p.flags.contains(MessageFlags::READ)
            && matches!(p.body, MessageBody::Empty)
            && self.reads.len() < 256
        {
            self.reads.push((src, p.id));
        }
    }

    fn check_state(&self, id: MessageId, dst: PublicKey, state: State) {
        let p = self
            .pushed
            .get(&id)
            .expect("a state change for a message never pushed");
        assert_eq!(p.dst, dst, "state change names another destination");
        match state {
            State::Received => assert!(
                self.done_acks.contains(&(dst, id, p.checksum)),
                "Received without a DONE-ACK carrying the checksum"
            ),
            State::Read => assert!(self.reads.contains(&(dst, id)), "Read without a READ"),
            _ => {}
        }
    }

    fn push(&mut self, m: &mut Messages, now: Instant, id: MessageId, p: Pushed) {
        if trace() {
            eprintln!(
                "push {id:?} len {} reply {} topic {:?} sum {:02x}{:02x}",
                p.payload.len(),
                p.reply,
                p.topic,
                p.checksum[0],
                p.checksum[1]
            );
        }
        let r = match p.reply {
            true => m.push_reply(now, id, p.dst, Bytes::from(p.payload.clone())),
            false => m.push(now, id, p.dst, &p.topic, Bytes::from(p.payload.clone())),
        };
        if r.is_ok() {
            let h = self.history.entry(id).or_default();
            if h.len() < 32 {
                h.push(p.clone());
            }
            self.pushed.insert(id, p);
        }
    }
}

struct World {
    now: Instant,
    a: Messages,
    b: Messages,
    sa: Side,
    sb: Side,
    /// Packets in flight A→B and B→A.
    to_b: VecDeque<Vec<u8>>,
    to_a: VecDeque<Vec<u8>>,
    /// Recent packets A sent to each forged source (for echoes).
    to_src: [VecDeque<Vec<u8>>; SOURCES],
    /// What each forged source sent per message id.
    logs: HashMap<(usize, MessageId), SentLog>,
}

impl World {
    fn drain(&mut self) {
        let k = keys();
        let mut n = 0;
        while let Some(t) = self.a.poll_transmit(self.now) {
            n += 1;
            assert!(n < MAX_PACKETS_PER_STEP, "A sends without end");
            MessagePacket::decode(&t.payload).expect("A sends what decodes");
            if t.dst == k.b {
                if self.to_b.len() < 64 {
                    self.to_b.push_back(t.payload);
                }
            } else {
                let s = k
                    .sources
                    .iter()
                    .position(|s| *s == t.dst)
                    .expect("known dst");
                let q = &mut self.to_src[s];
                if q.len() == 8 {
                    q.pop_front();
                }
                q.push_back(t.payload);
            }
        }
        n = 0;
        while let Some(t) = self.b.poll_transmit(self.now) {
            n += 1;
            assert!(n < MAX_PACKETS_PER_STEP, "B sends without end");
            assert_eq!(t.dst, k.a, "B only talks to A");
            if self.to_a.len() < 64 {
                self.to_a.push_back(t.payload);
            }
        }
        while let Some(e) = self.a.poll_event() {
            match e {
                Event::Received(m) => {
                    if m.src == k.b {
                        check_pair(&self.sb, &m.id, &m.topic, &m.payload, m.reply);
                    } else {
                        let s = k
                            .sources
                            .iter()
                            .position(|s| *s == m.src)
                            .expect("known src");
                        let log = self.logs.remove(&(s, m.id)).unwrap_or_default();
                        check_forged(&log, &m.topic, &m.payload, m.reply);
                    }
                }
                Event::StateChanged { id, dst, state } => self.sa.check_state(id, dst, state),
            }
        }
        while let Some(e) = self.b.poll_event() {
            match e {
                Event::Received(m) => {
                    assert_eq!(m.src, k.a);
                    check_pair(&self.sa, &m.id, &m.topic, &m.payload, m.reply);
                }
                Event::StateChanged { id, dst, state } => self.sb.check_state(id, dst, state),
            }
        }
    }

    fn forged(&mut self, s: usize, p: MessagePacket<'_>) {
        let src = keys().sources[s];
        let log = self.logs.entry((s, p.id)).or_default();
        if !p.flags.contains(MessageFlags::ACK) {
            match p.body {
                MessageBody::Init { total_len, topic } if log.inits.len() < 64 => {
                    let init = (
                        total_len,
                        topic.to_vec(),
                        p.flags.contains(MessageFlags::REPLY),
                    );
                    if !log.inits.contains(&init) {
                        log.inits.push(init);
                    }
                }
                MessageBody::Chunk {
                    index,
                    offset,
                    data,
                } if log.chunks.len() < 64 => log.chunks.push((index, offset, data.to_vec())),
                MessageBody::Done {
                    chunk_count,
                    checksum,
                } if log.dones.len() < 64 => log.dones.push((chunk_count, checksum)),
                MessageBody::Init { .. } | MessageBody::Chunk { .. } | MessageBody::Done { .. } => {
                    // Log full: stop feeding this message rather than lose track of it.
                    return;
                }
                _ => {}
            }
        }
        self.sa.saw(src, &p);
        self.a.handle_packet(self.now, src, p);
    }
}

fn check_forged(log: &SentLog, topic: &[u8], payload: &[u8], reply: bool) {
    assert!(
        log.inits
            .iter()
            .any(|(l, t, r)| *l == payload.len() as u64 && t == topic && *r == reply),
        "delivered without a matching INIT since the last delivery"
    );
    let sum = *blake3::hash(payload).as_bytes();
    assert!(
        log.dones.iter().any(|(_, c)| *c == sum),
        "delivered without a DONE carrying its checksum"
    );
    assert!(
        log.tiles(payload),
        "delivered bytes that were not sent as chunks 0..n"
    );
}

fn check_pair(sender: &Side, id: &MessageId, topic: &[u8], payload: &[u8], reply: bool) {
    let h = sender
        .history
        .get(id)
        .expect("delivered an id never pushed");
    assert!(
        h.iter()
            .any(|p| p.payload == payload && p.reply == reply && (reply || p.topic == topic)),
        "delivered a message the peer never pushed"
    );
}

fn forged_packet(w: &mut World, u: &mut Unstructured<'_>) -> Result<()> {
    let s = usize::from(u.int_in_range(0u8..=SOURCES as u8 - 1)?);
    let id = id(u)?;
    let mut flags = MessageFlags(0);
    if u.ratio(1, 8)? {
        flags = flags.with(MessageFlags::REPLY);
    }
    let topic_buf;
    let data_buf;
    let body = match u.int_in_range(0u8..=9)? {
        0 | 1 => {
            flags = flags.with(MessageFlags::INIT);
            topic_buf = match u.int_in_range(0u8..=3)? {
                0 => Vec::new(),
                1 => b"t".to_vec(),
                2 => b"other".to_vec(),
                _ => {
                    let n = usize::from(u.int_in_range(0u8..=255)?);
                    u.bytes(n)?.to_vec()
                }
            };
            MessageBody::Init {
                total_len: length(u)?,
                topic: &topic_buf,
            }
        }
        2..=4 => {
            flags = flags.with(MessageFlags::CHUNK);
            let log = w.logs.get(&(s, id));
            let sent = log.map_or(0, |l| l.latest_payload().1.len() as u64);
            let declared = log.and_then(|l| l.inits.last()).map_or(0, |i| i.0);
            let size = match u.int_in_range(0u8..=5)? {
                0 => 250,
                1 => 500,
                2 => 1300,
                3 => u.int_in_range(1..=260)?,
                // The rest of the latest INIT's length, after what was sent.
                4 => declared.saturating_sub(sent).min(1300) as usize,
                _ => u.int_in_range(0..=1400)?,
            };
            let index: u64 = match u.ratio(7, 8)? {
                true => u.int_in_range(0..=15)?,
                false => u.arbitrary()?,
            };
            let offset = match u.int_in_range(0u8..=3)? {
                0 | 1 => index.wrapping_mul(size as u64),
                2 => {
                    let n = w
                        .logs
                        .get(&(s, id))
                        .map_or(0, |l| l.latest_payload().1.len());
                    n as u64
                }
                _ => u.arbitrary()?,
            };
            data_buf = pattern(u.arbitrary()?, size);
            MessageBody::Chunk {
                index,
                offset,
                data: &data_buf,
            }
        }
        5 | 6 => {
            flags = flags.with(MessageFlags::DONE);
            let (count, sum) = match u.ratio(3, 4)? {
                true => {
                    let (n, p) = w
                        .logs
                        .get(&(s, id))
                        .map_or((0, Vec::new()), |l| l.latest_payload());
                    (n, *blake3::hash(&p).as_bytes())
                }
                false => (u.int_in_range(0..=20)?, u.arbitrary()?),
            };
            MessageBody::Done {
                chunk_count: count,
                checksum: sum,
            }
        }
        7 => {
            // Acknowledge one of the packets A sent to this source, as a receiver would.
            let q = &w.to_src[s];
            if q.is_empty() {
                return Ok(());
            }
            let i = u.choose_index(q.len())?;
            let bytes = q[i].clone();
            let p = MessagePacket::decode(&bytes).expect("A's packets decode");
            let ack = match p.flags.contains(MessageFlags::INIT)
                || p.flags.contains(MessageFlags::CHUNK)
                || p.flags.contains(MessageFlags::DONE)
            {
                true => p.ack(),
                false => return Ok(()),
            };
            w.forged(s, ack);
            return Ok(());
        }
        8 => {
            let kind = match u.int_in_range(0u8..=4)? {
                0 => MessageFlags::READ,
                1 => MessageFlags::ABORTED,
                2 => MessageFlags::INIT.with(MessageFlags::ACK),
                3 => MessageFlags::CHUNK.with(MessageFlags::ACK),
                _ => MessageFlags::DONE.with(MessageFlags::ACK),
            };
            let n = u.int_in_range(0usize..=48)?;
            let buf = u.bytes(n)?.to_vec();
            let mut raw = id.0.to_vec();
            raw.extend_from_slice(&kind.0.to_be_bytes());
            raw.extend_from_slice(&[0, 0]);
            raw.extend_from_slice(&buf);
            if let Ok(p) = MessagePacket::decode(&raw) {
                w.forged(s, p);
            }
            return Ok(());
        }
        _ => {
            // Raw bytes through the decoder.
            let n = u.int_in_range(0usize..=80)?;
            let raw = u.bytes(n)?.to_vec();
            if let Ok(p) = MessagePacket::decode(&raw) {
                w.forged(s, p);
            }
            return Ok(());
        }
    };
    w.forged(s, MessagePacket { id, flags, body });
    Ok(())
}

fn push(w: &mut World, u: &mut Unstructured<'_>, from_a: bool) -> Result<()> {
    let k = keys();
    let dst = match from_a {
        true => match u.int_in_range(0u8..=3)? {
            0 | 1 => k.b,
            i => k.sources[usize::from(i - 2)],
        },
        false => k.a,
    };
    let id = id(u)?;
    let len = match u.int_in_range(0u8..=4)? {
        0 => 0,
        1 => u.int_in_range(1..=300)?,
        2 => u.int_in_range(250..=2700)?,
        3 => 1300 * u.int_in_range(1..=3)? + u.int_in_range(0..=5)?,
        _ => u.int_in_range(0..=4100)?,
    };
    let payload = pattern(u.arbitrary()?, len);
    // The id fixes the kind of message: a sender never reuses an id for a message with other
    // metadata (the daemon draws ids at random; a reply reuses the id it answers). With such
    // reuse, a late INIT of the earlier message could lend its REPLY flag or topic to a later
    // message of the same length and id (the DONE checksum covers the payload only).
    let (reply, topic) = match id.0[0] {
        0 => (false, Vec::new()),
        1 => (true, Vec::new()),
        2 => (false, b"t".to_vec()),
        _ => (false, b"other".to_vec()),
    };
    let p = Pushed {
        dst,
        checksum: *blake3::hash(&payload).as_bytes(),
        topic,
        payload,
        reply,
    };
    let now = w.now;
    match from_a {
        true => w.sa.push(&mut w.a, now, id, p),
        false => w.sb.push(&mut w.b, now, id, p),
    }
    Ok(())
}

/// Moves a packet across the A-B channel: deliver, drop or duplicate the front one.
fn channel(w: &mut World, u: &mut Unstructured<'_>, to_b: bool) -> Result<()> {
    let k = keys();
    let action = u.int_in_range(0u8..=7)?;
    let q = match to_b {
        true => &mut w.to_b,
        false => &mut w.to_a,
    };
    let Some(bytes) = (match action {
        0 => q.pop_back(),
        1 => q.front().cloned(),
        _ => q.pop_front(),
    }) else {
        return Ok(());
    };
    if action == 7 {
        return Ok(()); // lost
    }
    let p = MessagePacket::decode(&bytes).expect("nodes send what decodes");
    let now = w.now;
    if trace() {
        let dir = if to_b { "A->B" } else { "B->A" };
        eprintln!("{:?} {dir} {}", now - base(), describe(&p));
    }
    match to_b {
        true => {
            w.sb.saw(k.a, &p);
            w.b.handle_packet(now, k.a, p);
        }
        false => {
            w.sa.saw(k.b, &p);
            w.a.handle_packet(now, k.b, p);
        }
    }
    Ok(())
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let k = keys();
    let now = base();
    let ca = config(u)?;
    let cb = config(u)?;
    let mut w = World {
        now,
        a: Messages::new(now, ca, k.a),
        b: Messages::new(now, cb, k.b),
        sa: Side::default(),
        sb: Side::default(),
        to_b: VecDeque::new(),
        to_a: VecDeque::new(),
        to_src: Default::default(),
        logs: HashMap::new(),
    };
    if u.ratio(1, 4)? {
        // A takes only topic "t", and from source 0 only.
        w.a.acl_mut().set_default_accept(false);
        w.a.acl_mut().add_topic(b"t");
        w.a.acl_mut().add_source(b"t", k.sources[0].subnet());
    }
    let mut steps = 0u32;
    while !u.is_empty() && steps < 2000 {
        steps += 1;
        match u.int_in_range(0u8..=16)? {
            0..=5 => forged_packet(&mut w, u)?,
            16 => {
                // A flood: one source resets the same message over and over (INITs whose
                // length differs each time), as fast as it can.
                let s = usize::from(u.int_in_range(0u8..=SOURCES as u8 - 1)?);
                let id = id(u)?;
                let len = length(u)?;
                for i in 0..u.int_in_range(1u64..=300)? {
                    let p = MessagePacket {
                        id,
                        flags: MessageFlags::INIT,
                        body: MessageBody::Init {
                            total_len: len ^ (i & 1),
                            topic: b"",
                        },
                    };
                    w.forged(s, p);
                    w.drain();
                    w.a.poll_timeout();
                }
            }
            6 => push(&mut w, u, true)?,
            7 => push(&mut w, u, false)?,
            8 | 9 => channel(&mut w, u, true)?,
            10 | 11 => channel(&mut w, u, false)?,
            12 => {
                let id = id(u)?;
                let now = w.now;
                match u.arbitrary()? {
                    true => w.a.abort(now, id),
                    false => w.b.abort(now, id),
                };
            }
            13 => {
                let id = id(u)?;
                let now = w.now;
                match u.int_in_range(0u8..=3)? {
                    0 => w.b.mark_read(now, k.a, id),
                    1 => w.a.mark_read(now, k.b, id),
                    i => w.a.mark_read(now, k.sources[usize::from(i - 2)], id),
                }
            }
            14 => {
                // Advance by an arbitrary amount, firing every due timer.
                let ms = match u.int_in_range(0u8..=3)? {
                    0 => u.int_in_range(0u64..=10)?,
                    1 => u.int_in_range(0u64..=1000)?,
                    2 => u.int_in_range(0u64..=60_000)?,
                    _ => u.int_in_range(0u64..=3_600_000)?,
                };
                w.now += Duration::from_millis(ms);
                let now = w.now;
                w.a.handle_timeout(now);
                w.b.handle_timeout(now);
            }
            _ => {
                // Jump to the earliest deadline of either node.
                let t = [w.a.poll_timeout(), w.b.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min();
                if let Some(t) = t {
                    w.now = w.now.max(t);
                    let now = w.now;
                    w.a.handle_timeout(now);
                    w.b.handle_timeout(now);
                }
            }
        }
        w.drain();
    }
    // Bounded state, whatever happened.
    for m in [&w.a, &w.b] {
        let d = format!("{m:?}");
        assert!(
            d.len() < MAX_DEBUG,
            "state grew to {} characters of Debug",
            d.len()
        );
        let timers = d.matches("Reverse((").count();
        assert!(
            timers <= MAX_TIMERS,
            "{timers} timer entries for a handful of messages"
        );
    }
    // Long after everything, nothing is left but a few lingering records.
    w.now += Duration::from_secs(7200);
    let now = w.now;
    w.a.handle_timeout(now);
    w.b.handle_timeout(now);
    w.drain();
    w.now += Duration::from_secs(7200);
    let now = w.now;
    w.a.handle_timeout(now);
    w.b.handle_timeout(now);
    w.drain();
    for m in [&mut w.a, &mut w.b] {
        assert_eq!(m.poll_timeout(), None, "timers left after two idle hours");
        for i in 0..IDS {
            let id = MessageId([i, 0, 0, 0, 0, 0, 0, i]);
            assert_eq!(
                m.status(id),
                None,
                "an outbound message outlived its linger"
            );
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
