//! Deterministic simulation of the message subsystem: nodes exchange message packets through
//! an in-memory network with seeded loss, duplication, reordering and latency on a simulated
//! clock that jumps to the next delivery or timer. Every message must be delivered exactly
//! once and intact, or be reported aborted by its sender; replies must reach the original
//! sender as replies; hostile input must stay bounded and never panic.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyphae_proto::message::{Config, Event, Messages, State};
use hyphae_wire::identity::PublicKey;
use hyphae_wire::message::{MessageBody, MessageFlags, MessageId, MessagePacket};

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn id(&mut self) -> MessageId {
        MessageId(self.next().to_be_bytes())
    }
    fn key(&mut self) -> PublicKey {
        let mut k = [0u8; 32];
        for c in k.chunks_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        PublicKey::from(k)
    }
}

/// Link behaviour.
#[derive(Clone, Copy)]
struct Link {
    loss: f64,
    dup: f64,
    latency: Duration,
    /// Uniform extra delay up to this, which reorders packets.
    jitter: Duration,
}

impl Link {
    /// No loss, no duplicates, no jitter: a FIFO path of fixed `latency`.
    fn clean(latency: Duration) -> Self {
        Self {
            loss: 0.0,
            dup: 0.0,
            latency,
            jitter: Duration::ZERO,
        }
    }
}

/// A receiver that behaves as the stock mycelium 0.7.10 receiver does (`message.rs`
/// `handle_message`): CHUNK/DONE for an unknown id dropped without ACK, INIT resets a pending
/// message, nothing of a completed message is acknowledged again, a chunk under 250 bytes is
/// taken only at the highest index possible for the length, chunks are placed by index.
#[derive(Default)]
struct StockReceiver {
    /// id -> (declared length, chunks by index)
    pending: HashMap<MessageId, StockPending>,
    complete: HashSet<MessageId>,
    /// The application reads each message at once: the reference then forgets it
    /// (`complete_msges` pops read messages), so a repeated INIT starts it over.
    reads_at_once: bool,
}

struct StockPending(u64, Vec<Option<Vec<u8>>>);

/// What the stock receiver answers, and what it delivered.
struct StockOutcome(Option<Vec<u8>>, Option<(MessageId, Vec<u8>)>);

/// A packet on the simulated wire, ordered by arrival time then sequence number.
struct Flying {
    at: Instant,
    seq: u64,
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

impl PartialEq for Flying {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Flying {}

impl PartialOrd for Flying {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Flying {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl StockReceiver {
    fn handle(&mut self, bytes: &[u8]) -> StockOutcome {
        let p = MessagePacket::decode(bytes).unwrap();
        if p.flags.contains(MessageFlags::ACK) {
            return StockOutcome(None, None);
        }
        let ack = |p: &MessagePacket<'_>| {
            let mut v = Vec::new();
            p.ack().encode(&mut v);
            Some(v)
        };
        match p.body {
            MessageBody::Init { total_len, .. } => {
                if self.complete.contains(&p.id) {
                    return StockOutcome(None, None);
                }
                let n = (total_len as usize).div_ceil(1300);
                self.pending
                    .insert(p.id, StockPending(total_len, vec![None; n]));
                StockOutcome(ack(&p), None)
            }
            MessageBody::Chunk {
                index,
                offset,
                data,
            } => {
                let Some(StockPending(len, chunks)) = self.pending.get_mut(&p.id) else {
                    return StockOutcome(None, None);
                };
                let size = data.len() as u64;
                if *len < offset + size {
                    return StockOutcome(None, None);
                }
                let max = if *len == 0 { 0 } else { len.div_ceil(250) - 1 };
                if index > max || (size < 250 && index != max) {
                    return StockOutcome(None, None);
                }
                if chunks.len() as u64 <= index {
                    chunks.resize(index as usize + 1, None);
                }
                chunks[index as usize] = Some(data.to_vec());
                StockOutcome(ack(&p), None)
            }
            MessageBody::Done {
                chunk_count,
                checksum,
            } => {
                let Some(StockPending(len, chunks)) = self.pending.get(&p.id) else {
                    return StockOutcome(None, None);
                };
                if chunk_count != chunks.len() as u64 || chunks.iter().any(Option::is_none) {
                    return StockOutcome(None, None);
                }
                let data: Vec<u8> = chunks.iter().flatten().flatten().copied().collect();
                if data.len() as u64 != *len || blake3::hash(&data).as_bytes() != &checksum {
                    return StockOutcome(None, None);
                }
                self.pending.remove(&p.id);
                if !self.reads_at_once {
                    self.complete.insert(p.id);
                }
                StockOutcome(ack(&p), Some((p.id, data)))
            }
            MessageBody::Empty => {
                if p.flags.contains(MessageFlags::ABORTED) {
                    self.pending.remove(&p.id);
                }
                StockOutcome(None, None)
            }
            _ => StockOutcome(None, None),
        }
    }
}

/// A sender that behaves as the stock mycelium 0.7.10 sender (`message.rs` `push_message`):
/// INIT every 100 ms until INIT-ACK, then every chunk (`data.chunks(1300)`, so a short tail
/// may follow a full chunk), each unacknowledged one again after 100 ms, and DONE on every
/// tick and every ACK once all chunks are acknowledged, until DONE-ACK.
#[derive(Default)]
struct StockSender {
    msgs: Vec<StockOut>,
    next_tick: Option<Instant>,
}

struct StockOut {
    id: MessageId,
    dst: PublicKey,
    data: Vec<u8>,
    /// 0 init, 1 sending, 2 received, 3 read
    state: u8,
    chunks: Vec<(bool, Option<Instant>)>,
}

impl StockSender {
    fn push(&mut self, now: Instant, id: MessageId, dst: PublicKey, data: Vec<u8>) {
        let n = data.len().div_ceil(1300);
        self.msgs.push(StockOut {
            id,
            dst,
            data,
            state: 0,
            chunks: vec![(false, None); n],
        });
        self.next_tick.get_or_insert(now);
    }

    fn tick(&mut self, now: Instant) -> Vec<(PublicKey, Vec<u8>)> {
        let mut out = Vec::new();
        for m in &mut self.msgs {
            let enc = |p: MessagePacket<'_>| {
                let mut v = Vec::new();
                p.encode(&mut v);
                v
            };
            match m.state {
                0 => out.push((
                    m.dst,
                    enc(MessagePacket {
                        id: m.id,
                        flags: MessageFlags::INIT,
                        body: MessageBody::Init {
                            total_len: m.data.len() as u64,
                            topic: b"",
                        },
                    }),
                )),
                1 => {
                    for (i, (acked, sent)) in m.chunks.iter_mut().enumerate() {
                        let due = sent.is_none_or(|t| now - t >= Duration::from_millis(100));
                        if !*acked && due {
                            *sent = Some(now);
                            let end = ((i + 1) * 1300).min(m.data.len());
                            out.push((
                                m.dst,
                                enc(MessagePacket {
                                    id: m.id,
                                    flags: MessageFlags::CHUNK,
                                    body: MessageBody::Chunk {
                                        index: i as u64,
                                        offset: (i * 1300) as u64,
                                        data: &m.data[i * 1300..end],
                                    },
                                }),
                            ));
                        }
                    }
                    if m.chunks.iter().all(|c| c.0) {
                        out.push((
                            m.dst,
                            enc(MessagePacket {
                                id: m.id,
                                flags: MessageFlags::DONE,
                                body: MessageBody::Done {
                                    chunk_count: m.chunks.len() as u64,
                                    checksum: *blake3::hash(&m.data).as_bytes(),
                                },
                            }),
                        ));
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Handles a packet from the receiver; true if the send loop must wake at once.
    fn handle(&mut self, bytes: &[u8]) -> bool {
        let p = MessagePacket::decode(bytes).unwrap();
        let Some(m) = self.msgs.iter_mut().find(|m| m.id == p.id) else {
            return false;
        };
        let ack = p.flags.contains(MessageFlags::ACK);
        match p.body {
            MessageBody::InitAck { .. } if m.state == 0 => m.state = 1,
            MessageBody::ChunkAck { index, .. } if m.state == 1 => {
                if let Some(c) = m.chunks.get_mut(index as usize) {
                    c.0 = true;
                }
            }
            MessageBody::Done { .. } if ack && m.state == 1 => m.state = 2,
            MessageBody::Empty if p.flags.contains(MessageFlags::READ) && m.state == 2 => {
                m.state = 3;
                return false;
            }
            _ => return false,
        }
        true
    }

    fn busy(&self) -> bool {
        self.msgs.iter().any(|m| m.state < 2)
    }
}

enum Peer {
    Ours(Box<Messages>),
    Stock(StockReceiver),
    StockSender(StockSender),
}

struct Node {
    key: PublicKey,
    peer: Peer,
    /// Received messages: (src, id, reply) -> payload, plus duplicates seen.
    received: HashMap<(PublicKey, MessageId, bool), Bytes>,
    received_at: HashMap<(PublicKey, MessageId, bool), Instant>,
    duplicates: usize,
    states: HashMap<MessageId, Vec<State>>,
    /// Reply with this payload transform to every non-reply message.
    auto_reply: bool,
}

struct Sim {
    now: Instant,
    t0: Instant,
    rng: Rng,
    link: Link,
    nodes: Vec<Node>,
    index: HashMap<PublicKey, usize>,
    wire: BinaryHeap<Reverse<Flying>>,
    seq: u64,
    packets: u64,
    /// Lose the first packet from node `.0` whose flags are `.1` (each entry once).
    lose: Vec<(usize, MessageFlags)>,
}

impl Sim {
    fn new(seed: u64, link: Link) -> Self {
        let t0 = Instant::now();
        Self {
            now: t0,
            t0,
            rng: Rng(seed),
            link,
            nodes: Vec::new(),
            index: HashMap::new(),
            wire: BinaryHeap::new(),
            seq: 0,
            packets: 0,
            lose: Vec::new(),
        }
    }

    fn add(&mut self, cfg: Config) -> usize {
        let key = self.rng.key();
        self.add_peer(key, Peer::Ours(Box::new(Messages::new(self.now, cfg, key))))
    }

    fn add_stock(&mut self) -> usize {
        let key = self.rng.key();
        self.add_peer(key, Peer::Stock(StockReceiver::default()))
    }

    fn add_peer(&mut self, key: PublicKey, peer: Peer) -> usize {
        self.nodes.push(Node {
            key,
            peer,
            received: HashMap::new(),
            received_at: HashMap::new(),
            duplicates: 0,
            states: HashMap::new(),
            auto_reply: false,
        });
        self.index.insert(key, self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    fn ours(&mut self, i: usize) -> &mut Messages {
        match &mut self.nodes[i].peer {
            Peer::Ours(m) => m,
            _ => panic!("stock node"),
        }
    }

    fn send(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        self.packets += 1;
        if self.rng.chance(self.link.loss) {
            return;
        }
        let flags = MessagePacket::decode(&bytes).map(|p| p.flags);
        if let Some(i) = self
            .lose
            .iter()
            .position(|(f, fl)| *f == from && flags.as_ref().is_ok_and(|x| x == fl))
        {
            self.lose.remove(i);
            return;
        }
        let copies = if self.rng.chance(self.link.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let jitter = self.rng.below(self.link.jitter.as_micros() as u64 + 1);
            let at = self.now + self.link.latency + Duration::from_micros(jitter);
            self.seq += 1;
            self.wire.push(Reverse(Flying {
                at,
                seq: self.seq,
                from,
                to,
                bytes: bytes.clone(),
            }));
        }
    }

    /// Drains every node's transmits and events.
    fn flush(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.nodes.len() {
                let now = self.now;
                let mut out = Vec::new();
                let mut events = Vec::new();
                if let Peer::Ours(m) = &mut self.nodes[i].peer {
                    while let Some(t) = m.poll_transmit(now) {
                        out.push(t);
                    }
                    while let Some(e) = m.poll_event() {
                        events.push(e);
                    }
                }
                for t in out {
                    any = true;
                    let to = self.index[&t.dst];
                    self.send(i, to, t.payload);
                }
                for e in events {
                    any = true;
                    self.on_event(i, e);
                }
            }
            if !any {
                break;
            }
        }
    }

    fn on_event(&mut self, i: usize, e: Event) {
        let now = self.now;
        match e {
            Event::Received(msg) => {
                let node = &mut self.nodes[i];
                let key = (msg.src, msg.id, msg.reply);
                if node.received.insert(key, msg.payload.clone()).is_some() {
                    node.duplicates += 1;
                }
                node.received_at.insert(key, now);
                let auto = node.auto_reply && !msg.reply;
                let m = self.ours(i);
                m.mark_read(now, msg.src, msg.id);
                if auto {
                    let mut reply = b"re:".to_vec();
                    reply.extend_from_slice(&msg.payload);
                    m.push_reply(now, msg.id, msg.src, Bytes::from(reply))
                        .unwrap();
                }
            }
            Event::StateChanged { id, state, .. } => {
                self.nodes[i].states.entry(id).or_default().push(state);
            }
        }
    }

    fn next_time(&mut self) -> Option<Instant> {
        let mut t = self.wire.peek().map(|Reverse(f)| f.at);
        for n in &mut self.nodes {
            let d = match &mut n.peer {
                Peer::Ours(m) => m.poll_timeout(),
                Peer::StockSender(s) if s.busy() => s.next_tick,
                _ => None,
            };
            if let Some(d) = d {
                t = Some(t.map_or(d, |t| t.min(d)));
            }
        }
        t
    }

    fn stock_send(&mut self, i: usize, now: Instant) {
        let Peer::StockSender(s) = &mut self.nodes[i].peer else {
            return;
        };
        for (dst, bytes) in s.tick(now) {
            let to = self.index[&dst];
            self.send(i, to, bytes);
        }
    }

    /// Runs until nothing is left to do or `limit` of simulated time passed.
    fn run(&mut self, limit: Duration) {
        self.flush();
        while let Some(t) = self.next_time() {
            if t > self.t0 + limit {
                break;
            }
            self.now = self.now.max(t);
            let now = self.now;
            while let Some(Reverse(f)) = self.wire.peek() {
                if f.at > now {
                    break;
                }
                let Some(Reverse(Flying {
                    from, to, bytes, ..
                })) = self.wire.pop()
                else {
                    break;
                };
                let src = self.nodes[from].key;
                match &mut self.nodes[to].peer {
                    Peer::Ours(m) => m.handle_datagram(now, src, &bytes).unwrap(),
                    Peer::Stock(s) => {
                        let StockOutcome(ack, done) = s.handle(&bytes);
                        if let Some(ack) = ack {
                            self.send(to, from, ack);
                        }
                        if let Some((id, data)) = done {
                            let node = &mut self.nodes[to];
                            node.received_at.entry((src, id, false)).or_insert(now);
                            if node
                                .received
                                .insert((src, id, false), Bytes::from(data))
                                .is_some()
                            {
                                node.duplicates += 1;
                            }
                        }
                    }
                    Peer::StockSender(s) => {
                        if s.handle(&bytes) {
                            self.stock_send(to, now);
                        }
                    }
                }
            }
            for i in 0..self.nodes.len() {
                match &mut self.nodes[i].peer {
                    Peer::Ours(m) => m.handle_timeout(now),
                    Peer::StockSender(s) if s.next_tick.is_some_and(|t| t <= now) => {
                        s.next_tick = Some(now + Duration::from_millis(100));
                        self.stock_send(i, now);
                    }
                    _ => {}
                }
            }
            self.flush();
        }
    }
}

const SIZES: [usize; 12] = [
    0, 1, 12, 249, 1299, 1300, 1301, 1400, 2850, 3000, 20_000, 150_000,
];

/// Many messages between three nodes over a bad network; checks exactly-once delivery.
/// Returns the time by which the last message was delivered, the mean delivery time, and the
/// packets sent (including lost ones and retransmissions).
fn lossy_run(seed: u64, link: Link, messages: usize) -> (Duration, Duration, u64) {
    let mut sim = Sim::new(seed, link);
    let n: Vec<usize> = (0..3).map(|_| sim.add(Config::default())).collect();
    let mut sent = Vec::new();
    for k in 0..messages {
        let from = n[k % 3];
        let to = n[(k + 1 + sim.rng.below(2) as usize) % 3];
        let size = SIZES[sim.rng.below(SIZES.len() as u64) as usize];
        let payload = Bytes::from(sim.rng.bytes(size));
        let id = sim.rng.id();
        let topic = format!("topic-{}", k % 4).into_bytes();
        let dst = sim.nodes[to].key;
        let now = sim.now;
        sim.ours(from)
            .push(now, id, dst, &topic, payload.clone())
            .unwrap();
        sent.push((from, to, id, payload));
    }
    sim.run(Duration::from_secs(700));
    let mut delivered = 0;
    let (mut last, mut sum) = (Duration::ZERO, Duration::ZERO);
    for (from, to, id, payload) in &sent {
        let src = sim.nodes[*from].key;
        if let Some(t) = sim.nodes[*to].received_at.get(&(src, *id, false)) {
            last = last.max(*t - sim.t0);
            sum += *t - sim.t0;
        }
        let state = sim.ours(*from).status(*id).map(|s| s.state);
        let got = sim.nodes[*to].received.get(&(src, *id, false));
        match got {
            Some(p) => {
                assert_eq!(p, payload, "seed {seed}: payload of {id:?} intact");
                delivered += 1;
            }
            None => assert_eq!(
                sim.nodes[*from].states.get(id).map(|v| v.as_slice()),
                Some(&[State::Aborted][..]),
                "seed {seed}: undelivered {id:?} must be reported aborted"
            ),
        }
        // A sender never claims reception that did not happen.
        if let Some(State::Received | State::Read) = state {
            assert!(got.is_some());
        }
        let states = sim.nodes[*from].states.get(id).cloned().unwrap_or_default();
        assert!(
            states == [State::Received]
                || states == [State::Received, State::Read]
                || states == [State::Read]
                || states == [State::Aborted],
            "seed {seed}: transitions {states:?}"
        );
    }
    for node in &sim.nodes {
        assert_eq!(node.duplicates, 0, "seed {seed}: delivered twice");
    }
    assert_eq!(delivered, sent.len(), "seed {seed}: all delivered");
    (last, sum / sent.len() as u32, sim.packets)
}

#[test]
fn perfect_network_is_fast() {
    let link = Link::clean(Duration::from_micros(500));
    let mut sim = Sim::new(1, link);
    let a = sim.add(Config::default());
    let b = sim.add(Config::default());
    sim.nodes[b].auto_reply = true;
    let id = MessageId([7; 8]);
    let dst = sim.nodes[b].key;
    let now = sim.now;
    sim.ours(a)
        .push(now, id, dst, b"t", Bytes::from(vec![42u8; 1024]))
        .unwrap();
    sim.run(Duration::from_secs(1));
    let src_b = sim.nodes[b].key;
    let reply = &sim.nodes[a].received[&(src_b, id, true)];
    assert_eq!(&reply[..3], b"re:");
    // Request (INIT, CHUNK and an early DONE back to back) and reply: two one-way trips of
    // 0.5 ms each, no retransmission timer involved.
    let took = sim.nodes[a].received_at[&(src_b, id, true)] - sim.t0;
    assert_eq!(took, Duration::from_millis(1), "request and reply");
    assert_eq!(sim.ours(a).status(id).unwrap().state, State::Read);
    assert!(sim.ours(a).srtt(&src_b).is_some());
}

#[test]
fn exactly_once_under_loss_duplication_and_reordering() {
    let link = Link {
        loss: 0.2,
        dup: 0.1,
        latency: Duration::from_millis(5),
        jitter: Duration::from_millis(10),
    };
    let (mut worst, mut mean, mut packets) = (Duration::ZERO, Duration::ZERO, 0);
    for seed in 0..12 {
        let (last, avg, p) = lossy_run(seed, link, 24);
        worst = worst.max(last);
        mean += avg / 12;
        packets += p;
    }
    eprintln!(
        "20% loss, 10% dup, 5-15 ms one way: 12 x 24 messages delivered once; mean delivery \
         {mean:?}, last {worst:?}, {packets} packets"
    );
}

#[test]
fn exactly_once_under_heavy_loss() {
    let link = Link {
        loss: 0.5,
        dup: 0.2,
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(40),
    };
    for seed in 100..104 {
        let (last, mean, _) = lossy_run(seed, link, 12);
        eprintln!("50% loss, 20% dup, 20-60 ms one way: mean delivery {mean:?}, last {last:?}");
    }
}

#[test]
fn replies_reach_the_waiting_sender() {
    let link = Link {
        loss: 0.25,
        dup: 0.1,
        latency: Duration::from_millis(2),
        jitter: Duration::from_millis(4),
    };
    for seed in 10..16 {
        let mut sim = Sim::new(seed, link);
        let a = sim.add(Config::default());
        let b = sim.add(Config::default());
        let c = sim.add(Config::default());
        sim.nodes[b].auto_reply = true;
        // A accepts nothing unsolicited; replies to its own messages still pass.
        sim.ours(a).acl_mut().set_default_accept(false);
        let (kb, kc) = (sim.nodes[b].key, sim.nodes[c].key);
        let mut ids = Vec::new();
        for k in 0..5 {
            let id = sim.rng.id();
            let payload = Bytes::from(sim.rng.bytes(SIZES[k * 2 + 1]));
            let now = sim.now;
            sim.ours(a)
                .push(now, id, kb, b"rpc", payload.clone())
                .unwrap();
            ids.push((id, payload));
        }
        // C claims to reply to a message A never sent it: the ACL applies, and refuses it.
        let forged = ids[0].0;
        let (now, ka) = (sim.now, sim.nodes[a].key);
        sim.ours(c)
            .push_reply(now, forged, ka, Bytes::from_static(b"forged"))
            .unwrap();
        sim.run(Duration::from_secs(60));
        for (id, payload) in &ids {
            let reply = &sim.nodes[a].received[&(kb, *id, true)];
            assert_eq!(&reply[3..], &payload[..], "seed {seed}");
            assert_eq!(&reply[..3], b"re:");
        }
        assert!(!sim.nodes[a].received.contains_key(&(kc, forged, true)));
        assert!(sim.ours(a).stats().refused_acl > 0);
        assert_eq!(sim.nodes[a].duplicates + sim.nodes[b].duplicates, 0);
    }
}

#[test]
fn status_transitions() {
    let link = Link::clean(Duration::from_millis(10));
    let mut sim = Sim::new(3, link);
    let mut cfg = Config::default();
    cfg.pipelining = false;
    let a = sim.add(cfg);
    let b = sim.add(Config::default());
    let id = MessageId([1; 8]);
    let kb = sim.nodes[b].key;
    let now = sim.now;
    sim.ours(a)
        .push(now, id, kb, b"", Bytes::from(vec![1u8; 3000]))
        .unwrap();
    let st = sim.ours(a).status(id).unwrap();
    assert_eq!((st.state, st.len, st.dst), (State::Pending, 3000, kb));
    assert_eq!(st.deadline - st.created, Duration::from_secs(300));
    sim.flush();
    // INIT out, nothing acknowledged: still pending at 15 ms.
    sim.run(Duration::from_millis(15));
    assert_eq!(sim.ours(a).status(id).unwrap().state, State::Pending);
    // INIT-ACK at 20 ms: the three chunks go out.
    sim.run(Duration::from_millis(25));
    assert_eq!(
        sim.ours(a).status(id).unwrap().state,
        State::Sending {
            pending: 0,
            sent: 3,
            acked: 0
        }
    );
    sim.run(Duration::from_secs(1));
    let st = sim.ours(a).status(id).unwrap();
    assert_eq!((st.state, st.len, st.dst), (State::Read, 3000, kb));
    assert_eq!(sim.nodes[a].states[&id], vec![State::Received, State::Read]);
    // The record lingers until window + linger, then goes.
    sim.run(Duration::from_secs(599));
    assert!(sim.ours(a).status(id).is_some());
    sim.run(Duration::from_secs(601));
    assert!(sim.ours(a).status(id).is_none());
}

/// Finished messages keep only their status, at most `max_delivered_records` of them (the
/// oldest go first), each until the linger after its window.
#[test]
fn finished_statuses_are_bounded() {
    let mut sim = Sim::new(5, Link::clean(Duration::from_millis(1)));
    let mut cfg = Config::default();
    cfg.max_delivered_records = 4;
    let a = sim.add(cfg);
    let b = sim.add(Config::default());
    let kb = sim.nodes[b].key;
    for i in 0..10u8 {
        let now = sim.now;
        sim.ours(a)
            .push(now, MessageId([i; 8]), kb, b"", Bytes::from_static(b"hi"))
            .unwrap();
        sim.run(Duration::from_millis(100));
    }
    for i in 0..10u8 {
        let st = sim.ours(a).status(MessageId([i; 8])).map(|s| s.state);
        match i {
            0..6 => assert_eq!(st, None, "message {i} forgotten"),
            _ => assert_eq!(st, Some(State::Read), "message {i} kept"),
        }
    }
    sim.run(Duration::from_secs(601));
    assert!(sim.ours(a).status(MessageId([9; 8])).is_none());
    assert!(sim.ours(a).poll_timeout().is_none(), "no timer left");
}

#[test]
fn unreachable_destination_is_aborted() {
    let link = Link {
        loss: 1.0,
        dup: 0.0,
        latency: Duration::from_millis(1),
        jitter: Duration::ZERO,
    };
    let mut sim = Sim::new(4, link);
    let mut cfg = Config::default();
    cfg.send_window = Duration::from_secs(10);
    cfg.linger = Duration::from_secs(10);
    let a = sim.add(cfg);
    let b = sim.add(Config::default());
    let id = MessageId([2; 8]);
    let kb = sim.nodes[b].key;
    let now = sim.now;
    sim.ours(a)
        .push(now, id, kb, b"x", Bytes::from_static(b"hello"))
        .unwrap();
    sim.run(Duration::from_secs(9));
    assert_eq!(sim.ours(a).status(id).unwrap().state, State::Pending);
    let before = sim.packets;
    sim.run(Duration::from_secs(11));
    assert_eq!(sim.ours(a).status(id).unwrap().state, State::Aborted);
    assert_eq!(sim.nodes[a].states[&id], vec![State::Aborted]);
    // Backoff to the 1 s ceiling: about one INIT per second, not one per 100 ms; one ABORTED.
    assert!(before < 30, "{before} packets in 9 s");
    sim.run(Duration::from_secs(21));
    assert!(sim.ours(a).status(id).is_none());
    assert!(sim.ours(a).poll_timeout().is_none(), "no timer left");
}

/// Our sender against a model of the stock receiver, on a bad network: delivered exactly
/// once; the sender ends `Received`, or `Aborted` only when the stock receiver delivered but
/// every copy of its single DONE-ACK was lost (it never acknowledges a completed message).
#[test]
fn interop_with_stock_receiver_under_loss() {
    let link = Link {
        loss: 0.15,
        dup: 0.1,
        latency: Duration::from_millis(3),
        jitter: Duration::from_millis(6),
    };
    let mut delivered = 0;
    let mut total = 0;
    let mut aborted = 0;
    for seed in 200..208 {
        let mut sim = Sim::new(seed, link);
        let mut cfg = Config::default();
        cfg.send_window = Duration::from_secs(30);
        let a = sim.add(cfg);
        let s = sim.add_stock();
        let ks = sim.nodes[s].key;
        let ka = sim.nodes[a].key;
        let mut sent = Vec::new();
        for size in SIZES {
            let id = sim.rng.id();
            let payload = Bytes::from(sim.rng.bytes(size));
            let now = sim.now;
            sim.ours(a).push(now, id, ks, b"", payload.clone()).unwrap();
            sent.push((id, payload));
        }
        sim.run(Duration::from_secs(100));
        for (id, payload) in &sent {
            total += 1;
            let got = sim.nodes[s].received.get(&(ka, *id, false));
            assert_eq!(got, Some(payload), "seed {seed}: {id:?} delivered intact");
            delivered += 1;
            let st = sim.ours(a).status(*id).unwrap().state;
            assert!(
                matches!(st, State::Received | State::Aborted),
                "seed {seed}: {st:?}"
            );
            aborted += usize::from(st == State::Aborted);
        }
        assert_eq!(sim.nodes[s].duplicates, 0);
    }
    assert_eq!(delivered, total);
    eprintln!(
        "stock receiver, 15% loss: {delivered}/{total} delivered once; {aborted} senders \
         aborted after a lost DONE-ACK the stock receiver never repeats"
    );
}

/// The stock receiver drops chunks that arrive before their INIT; pipelining must cope.
#[test]
fn pipelining_survives_lost_init_with_stock_receiver() {
    let link = Link::clean(Duration::from_millis(1));
    let mut sim = Sim::new(5, link);
    let a = sim.add(Config::default());
    let s = sim.add_stock();
    let ks = sim.nodes[s].key;
    let ka = sim.nodes[a].key;
    let id = MessageId([3; 8]);
    let payload = Bytes::from(vec![9u8; 5000]);
    let now = sim.now;
    sim.ours(a).push(now, id, ks, b"", payload.clone()).unwrap();
    // Lose the INIT only: the pipelined chunks reach a receiver that has no INIT.
    let init = sim.ours(a).poll_transmit(now).unwrap();
    assert_eq!(
        MessagePacket::decode(&init.payload).unwrap().flags,
        MessageFlags::INIT
    );
    sim.run(Duration::from_secs(5));
    assert_eq!(sim.nodes[s].received[&(ka, id, false)], payload);
    assert_eq!(sim.ours(a).status(id).unwrap().state, State::Received);
}

/// Packets an attacker can make: none may panic, deliver junk, or grow state without bound.
#[test]
fn hostile_input_is_bounded() {
    let t0 = Instant::now();
    let mut rng = Rng(77);
    let mut cfg = Config::default();
    cfg.max_inbound = 100;
    cfg.max_inbound_per_source = 10;
    cfg.max_inbound_bytes = 1 << 20;
    let own = rng.key();
    let mut m = Messages::new(t0, cfg, own);
    let evil = rng.key();
    let enc = |p: MessagePacket<'_>| {
        let mut v = Vec::new();
        p.encode(&mut v);
        v
    };
    let acks = |m: &mut Messages| std::iter::from_fn(|| m.poll_transmit(t0)).count();

    // A chunk for an id without INIT: dropped, no ACK (as the reference).
    let id = MessageId([1; 8]);
    let chunk = |id, index, offset, data: &[u8]| {
        enc(MessagePacket {
            id,
            flags: MessageFlags::CHUNK,
            body: MessageBody::Chunk {
                index,
                offset,
                data,
            },
        })
    };
    m.handle_datagram(t0, evil, &chunk(id, 0, 0, &[1; 300]))
        .unwrap();
    assert_eq!(acks(&mut m), 0);
    assert_eq!(m.stats().unknown, 1);

    // INIT for 3000 bytes, then lies.
    let init = |id, total_len| {
        enc(MessagePacket {
            id,
            flags: MessageFlags::INIT,
            body: MessageBody::Init {
                total_len,
                topic: b"",
            },
        })
    };
    m.handle_datagram(t0, evil, &init(id, 3000)).unwrap();
    assert_eq!(acks(&mut m), 1);
    let data = rng.bytes(3000);
    let invalid = [
        chunk(id, 0, 2900, &data[..200]),          // beyond total_len
        chunk(id, 12, 0, &data[..250]),            // index impossible for 3000 bytes
        chunk(id, 0, 0, &data[..100]),             // tiny chunk that does not end the message
        chunk(id, 0, u64::MAX - 10, &data[..300]), // offset overflow
    ];
    for p in &invalid {
        m.handle_datagram(t0, evil, p).unwrap();
    }
    assert_eq!(m.stats().invalid, 4);
    assert_eq!(acks(&mut m), 0);
    // Overlap: chunk 1 at 1300..2600 stored; chunk 0 claiming 0..1400 overlaps it.
    m.handle_datagram(t0, evil, &chunk(id, 1, 1300, &data[1300..2600]))
        .unwrap();
    m.handle_datagram(t0, evil, &chunk(id, 0, 0, &data[..1400]))
        .unwrap();
    assert_eq!(m.stats().invalid, 5);
    m.handle_datagram(t0, evil, &chunk(id, 0, 0, &data[..1300]))
        .unwrap();
    m.handle_datagram(t0, evil, &chunk(id, 2, 2600, &data[2600..]))
        .unwrap();
    // Duplicate chunk: acknowledged again, stored once.
    m.handle_datagram(t0, evil, &chunk(id, 2, 2600, &data[2600..]))
        .unwrap();
    assert_eq!(acks(&mut m), 4);
    // DONE with a wrong checksum, or a wrong count: ignored, no ACK, nothing delivered.
    let done = |id, chunk_count, checksum| {
        enc(MessagePacket {
            id,
            flags: MessageFlags::DONE,
            body: MessageBody::Done {
                chunk_count,
                checksum,
            },
        })
    };
    let good = *blake3::hash(&data).as_bytes();
    m.handle_datagram(t0, evil, &done(id, 3, [0; 32])).unwrap();
    m.handle_datagram(t0, evil, &done(id, 3, [0; 32])).unwrap();
    m.handle_datagram(t0, evil, &done(id, 4, good)).unwrap();
    assert_eq!(m.stats().bad_done, 3);
    assert_eq!(acks(&mut m), 0);
    assert!(m.poll_event().is_none());
    // The right DONE delivers once; its repeats are re-acknowledged, never re-delivered.
    for _ in 0..3 {
        m.handle_datagram(t0, evil, &done(id, 3, good)).unwrap();
    }
    assert_eq!(acks(&mut m), 3);
    let Some(Event::Received(msg)) = m.poll_event() else {
        panic!()
    };
    assert_eq!(&msg.payload[..], &data[..]);
    assert!(m.poll_event().is_none());
    // A late duplicate INIT and chunk of the delivered message: re-acked, no new message.
    m.handle_datagram(t0, evil, &init(id, 3000)).unwrap();
    m.handle_datagram(t0, evil, &chunk(id, 0, 0, &data[..1300]))
        .unwrap();
    m.handle_datagram(t0, evil, &done(id, 3, good)).unwrap();
    assert_eq!(acks(&mut m), 3);
    assert!(m.poll_event().is_none());

    // Oversized INIT.
    m.handle_datagram(t0, evil, &init(MessageId([2; 8]), u64::MAX))
        .unwrap();
    assert_eq!(acks(&mut m), 0);

    // INIT flood from one source: capped per source.
    for _ in 0..1000 {
        m.handle_datagram(t0, evil, &init(rng.id(), 1 << 20))
            .unwrap();
    }
    assert_eq!(acks(&mut m), 10);
    // ... and from many sources: capped in total.
    for _ in 0..1000 {
        let k = rng.key();
        m.handle_datagram(t0, k, &init(rng.id(), 1 << 20)).unwrap();
    }
    assert_eq!(acks(&mut m), 90);
    // Byte budget: filling the 1 MiB budget with chunks, the rest is refused.
    let big = MessageId([9; 8]);
    let k = rng.key();
    m.handle_datagram(t0, k, &init(big, 2 << 20)).unwrap(); // over the total cap: no entry
    assert_eq!(acks(&mut m), 0);

    // Random garbage and mutated packets never panic.
    let mut samples = vec![
        init(id, 3000),
        chunk(id, 0, 0, &data[..1300]),
        done(id, 3, good),
    ];
    samples.push(vec![]);
    for _ in 0..20_000 {
        let mut p = samples[rng.below(samples.len() as u64) as usize].clone();
        for _ in 0..=rng.below(4) {
            if p.is_empty() {
                break;
            }
            let i = rng.below(p.len() as u64) as usize;
            p[i] = rng.next() as u8;
        }
        if rng.chance(0.2) {
            p.truncate(rng.below(p.len() as u64 + 1) as usize);
        }
        let src = if rng.chance(0.5) { evil } else { rng.key() };
        let _ = m.handle_datagram(t0, src, &p);
        m.handle_timeout(t0);
    }
    while m.poll_transmit(t0).is_some() {}
    // Everything pending expires: after the idle timeout nothing is buffered.
    let later = t0 + Duration::from_secs(61);
    m.handle_timeout(later);
    let t = m.poll_timeout().unwrap();
    assert!(t > later, "only the delivered record's expiry is left");
}

/// Byte budget on pending inbound data.
#[test]
fn inbound_byte_budget() {
    let t0 = Instant::now();
    let mut rng = Rng(8);
    let mut cfg = Config::default();
    cfg.max_inbound_bytes = 10_000;
    let mut m = Messages::new(t0, cfg, rng.key());
    let src = rng.key();
    let mut enc = |p: MessagePacket<'_>| {
        let mut v = Vec::new();
        p.encode(&mut v);
        m.handle_datagram(t0, src, &v).unwrap();
    };
    let id = MessageId([4; 8]);
    enc(MessagePacket {
        id,
        flags: MessageFlags::INIT,
        body: MessageBody::Init {
            total_len: 20_000,
            topic: b"",
        },
    });
    let data = vec![5u8; 1300];
    for i in 0..15u64 {
        enc(MessagePacket {
            id,
            flags: MessageFlags::CHUNK,
            body: MessageBody::Chunk {
                index: i,
                offset: i * 1300,
                data: &data,
            },
        });
    }
    let acked = std::iter::from_fn(|| m.poll_transmit(t0)).count();
    // INIT-ACK plus 7 chunks (9100 bytes); the 8th would pass 10 000.
    assert_eq!(acked, 1 + 7);
    assert_eq!(m.stats().over_limit, 8);
}

/// A sender toward a node that keeps dropping: the retransmission timer follows the measured
/// RTT, not a fixed 100 ms.
#[test]
fn retransmission_follows_rtt() {
    let link = Link {
        loss: 0.1,
        dup: 0.0,
        latency: Duration::from_millis(40),
        jitter: Duration::from_millis(2),
    };
    let mut sim = Sim::new(9, link);
    let a = sim.add(Config::default());
    let b = sim.add(Config::default());
    let kb = sim.nodes[b].key;
    let mut ids = BTreeMap::new();
    for k in 0..20u8 {
        let id = MessageId([k; 8]);
        let now = sim.now;
        sim.ours(a)
            .push(now, id, kb, b"", Bytes::from(vec![k; 4000]))
            .unwrap();
        ids.insert(id, ());
    }
    sim.run(Duration::from_secs(30));
    let srtt = sim.ours(a).srtt(&kb).unwrap();
    assert!(
        srtt > Duration::from_millis(75) && srtt < Duration::from_millis(90),
        "srtt {srtt:?}"
    );
    for id in ids.keys() {
        assert!(matches!(
            sim.ours(a).status(*id).unwrap().state,
            State::Received | State::Read
        ));
    }
}

/// A model of the stock sender toward our receiver on a bad network: every message (the
/// 1400-byte one with its 100-byte tail included) is delivered exactly once, and every stock
/// sender reaches `Received` because our receiver acknowledges a repeated DONE.
#[test]
fn interop_with_stock_sender_under_loss() {
    let link = Link {
        loss: 0.2,
        dup: 0.1,
        latency: Duration::from_millis(3),
        jitter: Duration::from_millis(6),
    };
    for seed in 300..306 {
        let mut sim = Sim::new(seed, link);
        let key = sim.rng.key();
        let s = sim.add_peer(key, Peer::StockSender(StockSender::default()));
        let r = sim.add(Config::default());
        let kr = sim.nodes[r].key;
        let mut sent = Vec::new();
        for size in SIZES {
            let id = sim.rng.id();
            let data = sim.rng.bytes(size);
            let now = sim.now;
            let Peer::StockSender(st) = &mut sim.nodes[s].peer else {
                unreachable!()
            };
            st.push(now, id, kr, data.clone());
            sent.push((id, data));
        }
        sim.run(Duration::from_secs(120));
        for (id, data) in &sent {
            let got = &sim.nodes[r].received[&(key, *id, false)];
            assert_eq!(&got[..], &data[..], "seed {seed}");
        }
        assert_eq!(sim.nodes[r].duplicates, 0);
        let Peer::StockSender(st) = &sim.nodes[s].peer else {
            unreachable!()
        };
        // READ is sent once and may be lost: Received or Read.
        assert!(st.msgs.iter().all(|m| m.state >= 2), "seed {seed}");
    }
}

/// A repeated INIT that matches the pending message keeps its chunks (a stock sender repeats
/// its INIT until the ACK arrives); one that differs resets the message, as the reference.
#[test]
fn repeated_init_keeps_or_resets() {
    let t0 = Instant::now();
    let mut rng = Rng(12);
    let mut m = Messages::new(t0, Config::default(), rng.key());
    let src = rng.key();
    let id = MessageId([5; 8]);
    let data = rng.bytes(2000);
    let feed = |m: &mut Messages, p: MessagePacket<'_>| {
        let mut v = Vec::new();
        p.encode(&mut v);
        m.handle_datagram(t0, src, &v).unwrap();
    };
    let init = |total_len| MessagePacket {
        id,
        flags: MessageFlags::INIT,
        body: MessageBody::Init {
            total_len,
            topic: b"t",
        },
    };
    let chunk = |index, offset, data| MessagePacket {
        id,
        flags: MessageFlags::CHUNK,
        body: MessageBody::Chunk {
            index,
            offset,
            data,
        },
    };
    let done = |chunk_count, data: &[u8]| MessagePacket {
        id,
        flags: MessageFlags::DONE,
        body: MessageBody::Done {
            chunk_count,
            checksum: *blake3::hash(data).as_bytes(),
        },
    };
    feed(&mut m, init(2000));
    feed(&mut m, chunk(0, 0, &data[..1300]));
    feed(&mut m, init(2000));
    feed(&mut m, chunk(1, 1300, &data[1300..]));
    feed(&mut m, done(2, &data));
    let Some(Event::Received(msg)) = m.poll_event() else {
        panic!("kept chunks across the repeated INIT")
    };
    assert_eq!(&msg.payload[..], &data[..]);

    let id2 = MessageId([6; 8]);
    let reinit = |total_len| MessagePacket {
        id: id2,
        ..init(total_len)
    };
    feed(&mut m, reinit(2000));
    feed(
        &mut m,
        MessagePacket {
            id: id2,
            ..chunk(0, 0, &data[..1300])
        },
    );
    feed(&mut m, reinit(12));
    feed(
        &mut m,
        MessagePacket {
            id: id2,
            ..chunk(0, 0, &data[..12])
        },
    );
    feed(
        &mut m,
        MessagePacket {
            id: id2,
            ..done(1, &data[..12])
        },
    );
    let Some(Event::Received(msg)) = m.poll_event() else {
        panic!("reset message delivered")
    };
    assert_eq!((msg.id, &msg.payload[..]), (id2, &data[..12]));
    assert!(m.poll_event().is_none());
}

/// Our sender `a` and a receiver `b` (ours, or the stock model) on a clean FIFO link.
fn clean_pair(seed: u64, latency: Duration, stock: bool) -> (Sim, usize, usize) {
    let mut sim = Sim::new(seed, Link::clean(latency));
    let a = sim.add(Config::default());
    let b = match stock {
        true => sim.add_stock(),
        false => sim.add(Config::default()),
    };
    (sim, a, b)
}

/// INIT, the chunks and the DONE go back to back: on a clean FIFO path a message is delivered
/// one trip after it was pushed, to our receiver and to the stock one, whatever its size, and
/// the sender hears of the delivery.
#[test]
fn a_message_arrives_one_trip_after_its_push() {
    for stock in [false, true] {
        for size in [0usize, 1024, 1400, 5000, 100_000] {
            let (mut sim, a, b) = clean_pair(9, Duration::from_millis(1), stock);
            let (ka, kb) = (sim.nodes[a].key, sim.nodes[b].key);
            let id = MessageId([5; 8]);
            let payload = Bytes::from(sim.rng.bytes(size));
            let now = sim.now;
            sim.ours(a).push(now, id, kb, b"", payload.clone()).unwrap();
            sim.run(Duration::from_secs(5));
            let what = format!("{size} B to {}", if stock { "stock" } else { "ours" });
            assert_eq!(sim.nodes[b].received[&(ka, id, false)], payload, "{what}");
            let took = sim.nodes[b].received_at[&(ka, id, false)] - sim.t0;
            assert_eq!(took, Duration::from_millis(1), "{what}");
            let st = sim.ours(a).status(id).unwrap().state;
            assert!(
                matches!(st, State::Received | State::Read),
                "{what}: {st:?}"
            );
            assert_eq!(sim.nodes[b].duplicates, 0, "{what}");
        }
    }
}

/// A receiver missing a chunk ignores the early DONE (the stock one silently): the chunk is
/// sent again and the ordinary DONE follows its ACK, so the message still arrives once, and
/// the sender learns it. Same when the early DONE itself is lost.
#[test]
fn a_lost_chunk_or_early_done_is_repaired() {
    for stock in [false, true] {
        for lost in [MessageFlags::CHUNK, MessageFlags::DONE] {
            let (mut sim, a, b) = clean_pair(10, Duration::from_millis(1), stock);
            let (ka, kb) = (sim.nodes[a].key, sim.nodes[b].key);
            sim.lose.push((a, lost));
            let id = MessageId([6; 8]);
            let payload = Bytes::from(sim.rng.bytes(5000));
            let now = sim.now;
            sim.ours(a).push(now, id, kb, b"", payload.clone()).unwrap();
            sim.run(Duration::from_secs(5));
            let what = format!("lost {lost:?}, stock {stock}");
            assert!(sim.lose.is_empty(), "{what}: the packet was sent");
            assert_eq!(sim.nodes[b].received[&(ka, id, false)], payload, "{what}");
            assert_eq!(sim.nodes[b].duplicates, 0, "{what}");
            let st = sim.ours(a).status(id).unwrap().state;
            assert!(
                matches!(st, State::Received | State::Read),
                "{what}: {st:?}"
            );
            let took = sim.nodes[b].received_at[&(ka, id, false)] - sim.t0;
            assert!(took > Duration::from_millis(1), "{what}: {took:?}");
            assert!(took < Duration::from_secs(1), "{what}: {took:?}");
        }
    }
}

/// A path slower than the first retransmission timeout (100 ms): the INIT times out before its
/// ACK arrives although the receiver, stock or ours, already has the whole message (INIT, chunks
/// and the early DONE went together). The sender falls back to INIT first, but the DONE-ACK
/// still settles the message: delivered once, even to a stock receiver whose application read
/// it at once (and which would take a repeated message as new), and the sender ends Received.
#[test]
fn a_slow_first_path_settles_the_early_done_without_a_second_delivery() {
    for stock in [false, true] {
        for size in [1024usize, 5000] {
            let (mut sim, a, b) = clean_pair(11, Duration::from_millis(80), stock);
            if let Peer::Stock(r) = &mut sim.nodes[b].peer {
                r.reads_at_once = true;
            }
            let (ka, kb) = (sim.nodes[a].key, sim.nodes[b].key);
            let id = MessageId([12; 8]);
            let payload = Bytes::from(sim.rng.bytes(size));
            let now = sim.now;
            sim.ours(a).push(now, id, kb, b"", payload.clone()).unwrap();
            sim.run(Duration::from_secs(20));
            let what = format!("{size} B to {}", if stock { "stock" } else { "ours" });
            assert_eq!(sim.nodes[b].received[&(ka, id, false)], payload, "{what}");
            assert_eq!(sim.nodes[b].duplicates, 0, "{what}: delivered twice");
            let st = sim.ours(a).status(id).unwrap().state;
            assert!(
                matches!(st, State::Received | State::Read),
                "{what}: {st:?}"
            );
        }
    }
}

/// A path slower than the initial retransmission timeout (300 ms round trip against 100 ms):
/// the first message to it times out and is sent again, but the backed-off timeout is kept
/// for the next ones until a packet sent once is acknowledged, so the sender learns the
/// round-trip time and later messages go without a single retransmission.
#[test]
fn a_slow_path_is_learned_and_later_messages_are_not_retransmitted() {
    for stock in [false, true] {
        let (mut sim, a, b) = clean_pair(12, Duration::from_millis(150), stock);
        let (ka, kb) = (sim.nodes[a].key, sim.nodes[b].key);
        let mut per_message = Vec::new();
        for i in 0..6u8 {
            let before = sim.ours(a).stats().retransmitted;
            let id = MessageId([30 + i; 8]);
            let payload = Bytes::from(sim.rng.bytes(3000));
            let now = sim.now;
            sim.ours(a).push(now, id, kb, b"", payload.clone()).unwrap();
            let limit = sim.now - sim.t0 + Duration::from_secs(10);
            sim.run(limit);
            assert_eq!(sim.nodes[b].received[&(ka, id, false)], payload);
            let st = sim.ours(a).status(id).unwrap().state;
            assert!(matches!(st, State::Received | State::Read), "{st:?}");
            per_message.push(sim.ours(a).stats().retransmitted - before);
        }
        let what = if stock { "stock" } else { "ours" };
        assert!(
            sim.ours(a).srtt(&kb).is_some(),
            "{what}: the RTT was learned"
        );
        assert_eq!(
            per_message[3..],
            [0, 0, 0],
            "{what}: retransmissions per message {per_message:?}"
        );
        assert_eq!(sim.nodes[b].duplicates, 0);
    }
}
