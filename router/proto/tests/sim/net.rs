//! A deterministic in-memory network of [`Router`]s (quinn's `Pair`, smoltcp's netsim).
//!
//! Links carry real encoded frames (`Tlv::encode_frame`, decoded with the `Deframer`) with a
//! seeded latency per link and optional seeded loss. The clock is one base `Instant` plus a
//! simulated offset; each step jumps it to the earliest frame delivery or router timeout.
//! After every step that changed a forwarding table, the changed destinations are checked
//! for forwarding loops by walking next hops from every node.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hyphae_proto::babel::Config;
use hyphae_proto::{Event, LinkKind, PeerId, Router};
use hyphae_wire::babel::Tlv;
use hyphae_wire::deframer::{Deframer, Frame};
use hyphae_wire::identity::PublicKey;
use hyphae_wire::{RouterId, Subnet};

/// splitmix64: a tiny seeded PRNG.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }

    pub(crate) fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0; N];
        for c in b.chunks_mut(8) {
            let w = self.next_u64().to_le_bytes();
            c.copy_from_slice(&w[..c.len()]);
        }
        b
    }
}

/// One simulated node.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) router: Router,
    pub(crate) key: PublicKey,
    pub(crate) subnet: Subnet,
    pub(crate) alive: bool,
    /// Mirror of the node's forwarding table, from `poll_fib_change`, indexed by the
    /// destination node.
    pub(crate) fib: Vec<Option<PeerId>>,
    fib_len: usize,
    next_timeout: Option<Instant>,
}

/// One link between two nodes.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) a: usize,
    pub(crate) b: usize,
    pub(crate) up: bool,
    epoch: u64,
    latency: Duration,
    /// Last scheduled delivery per direction (a→b, b→a): streams keep order.
    last: [Option<Instant>; 2],
}

impl Link {
    pub(crate) fn peer_id(&self, id: usize) -> PeerId {
        PeerId((self.epoch << 32) | id as u64)
    }

    fn other(&self, n: usize) -> usize {
        if n == self.a { self.b } else { self.a }
    }
}

#[derive(Debug)]
struct InFlight {
    to: usize,
    link: usize,
    epoch: u64,
    bytes: Vec<u8>,
}

/// The whole network.
#[derive(Debug)]
pub(crate) struct Net {
    pub(crate) base: Instant,
    pub(crate) now: Instant,
    pub(crate) nodes: Vec<Node>,
    pub(crate) links: Vec<Link>,
    pub(crate) config: Config,
    pub(crate) loss: f64,
    pub(crate) rng: Rng,
    pub(crate) frames: u64,
    /// Frames sent per TLV type: Hello, IHU, Update, retraction, RouteRequest, SeqnoRequest.
    pub(crate) by_type: [u64; 6],
    pub(crate) events: Vec<(Duration, usize, Event)>,
    /// Walk next hops for loops after every step that changed a FIB.
    pub(crate) check_loops: bool,
    /// FIB changes seen, and next-hop walks done to look for loops.
    pub(crate) fib_changes: u64,
    pub(crate) loop_walks: u64,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    slab: Vec<Option<InFlight>>,
    free: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    seq: u64,
    deframer: Deframer,
    /// (node, destination) pairs whose FIB entry changed in this step.
    changed: Vec<(usize, usize)>,
    owner: HashMap<Subnet, usize>,
}

impl Net {
    /// `n` nodes with keys from `seed`, no links yet.
    pub(crate) fn new(n: usize, seed: u64, config: Config) -> Self {
        let base = Instant::now();
        let mut rng = Rng::new(seed);
        let mut net = Self {
            base,
            now: base,
            nodes: Vec::new(),
            links: Vec::new(),
            config,
            loss: 0.0,
            rng: Rng::new(seed ^ 0x5eed),
            frames: 0,
            by_type: [0; 6],
            events: Vec::new(),
            check_loops: true,
            fib_changes: 0,
            loop_walks: 0,
            queue: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            timers: BinaryHeap::new(),
            seq: 0,
            deframer: Deframer::new(),
            changed: Vec::new(),
            owner: HashMap::new(),
        };
        for _ in 0..n {
            let key = PublicKey::from(rng.bytes::<32>());
            let rid = RouterId::new(&key, 0, rng.bytes::<6>());
            let router = Router::new(base, net.config.clone(), rid);
            let subnet = key.subnet();
            net.owner.insert(subnet, net.nodes.len());
            net.nodes.push(Node {
                router,
                key,
                subnet,
                alive: true,
                fib: vec![None; n],
                fib_len: 0,
                next_timeout: None,
            });
        }
        for i in 0..n {
            net.drain(i);
        }
        net
    }

    /// Simulated time since the start.
    pub(crate) fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    /// Adds a link with a seeded latency of 1..=`max_latency_ms` and brings it up.
    pub(crate) fn connect(&mut self, a: usize, b: usize, max_latency_ms: u64) -> usize {
        let latency = Duration::from_micros(1000 + self.rng.below(max_latency_ms * 1000));
        self.links.push(Link {
            a,
            b,
            up: false,
            epoch: 0,
            latency,
            last: [None, None],
        });
        let id = self.links.len() - 1;
        self.link_up(id);
        id
    }

    /// Brings a link up (a new connection: fresh peer ids on both ends).
    pub(crate) fn link_up(&mut self, id: usize) {
        let now = self.now;
        let l = &mut self.links[id];
        if l.up {
            return;
        }
        l.up = true;
        l.epoch += 1;
        l.last = [None, None];
        let (a, b, pid) = (l.a, l.b, l.peer_id(id));
        for n in [a, b] {
            if self.nodes[n].alive {
                self.nodes[n]
                    .router
                    .handle_peer_up(now, pid, LinkKind::TcpV6);
            }
        }
        self.drain(a);
        self.drain(b);
    }

    /// Closes a link: both ends notice at once (a TCP/QUIC close). Frames in flight are lost.
    pub(crate) fn link_down(&mut self, id: usize) {
        let now = self.now;
        let l = &mut self.links[id];
        if !l.up {
            return;
        }
        l.up = false;
        let (a, b, pid) = (l.a, l.b, l.peer_id(id));
        for n in [a, b] {
            if self.nodes[n].alive {
                self.nodes[n].router.handle_peer_down(now, pid);
            }
        }
        self.drain(a);
        self.drain(b);
    }

    /// Kills a node silently: it stops answering, its links stay "up" for its neighbours
    /// until their dead-peer detection fires.
    pub(crate) fn kill(&mut self, n: usize) {
        self.nodes[n].alive = false;
        self.nodes[n].fib.fill(None);
        self.nodes[n].fib_len = 0;
        self.nodes[n].next_timeout = None;
    }

    /// Restarts node `n`: all its links close, it comes back with the same key, a new
    /// router id (new random part, seqno 0) and reconnects.
    pub(crate) fn restart(&mut self, n: usize) {
        let ids: Vec<usize> = self.links_of(n).collect();
        for &l in &ids {
            self.link_down(l);
        }
        let rid = RouterId::new(&self.nodes[n].key, 0, self.rng.bytes::<6>());
        let node = &mut self.nodes[n];
        node.router = Router::new(self.now, self.config.clone(), rid);
        node.alive = true;
        node.fib.fill(None);
        node.fib_len = 0;
        self.drain(n);
        for l in ids {
            self.link_up(l);
        }
    }

    pub(crate) fn links_of(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        self.links
            .iter()
            .enumerate()
            .filter(move |(_, l)| l.a == n || l.b == n)
            .map(|(i, _)| i)
    }

    /// Runs one step; `false` when nothing at all is scheduled.
    pub(crate) fn step(&mut self) -> bool {
        let next_msg = self.queue.peek().map(|m| m.0.0);
        let next_timer = loop {
            match self.timers.peek() {
                Some(&Reverse((at, n))) if self.nodes[n].next_timeout != Some(at) => {
                    self.timers.pop();
                }
                other => break other.map(|r| r.0.0),
            }
        };
        let Some(t) = [next_msg, next_timer].into_iter().flatten().min() else {
            return false;
        };
        self.now = self.now.max(t);
        let now = self.now;
        while self.queue.peek().is_some_and(|m| m.0.0 <= now) {
            let Some(Reverse((_, _, slot))) = self.queue.pop() else {
                break;
            };
            let Some(m) = self.slab[slot].take() else {
                continue;
            };
            self.free.push(slot);
            let l = &self.links[m.link];
            if !l.up || l.epoch != m.epoch || !self.nodes[m.to].alive {
                continue;
            }
            let peer = l.peer_id(m.link);
            let mut buf = BytesMut::from(&m.bytes[..]);
            let frame = self.deframer.next_frame(&mut buf);
            assert!(buf.is_empty(), "one whole frame per delivery");
            match frame {
                Ok(Some(Frame::Control(tlv))) => {
                    self.nodes[m.to].router.handle_tlv(now, peer, tlv);
                }
                other => panic!("router sent a frame that does not decode: {other:?}"),
            }
            self.drain(m.to);
        }
        while let Some(&Reverse((at, n))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.nodes[n].next_timeout != Some(at) || !self.nodes[n].alive {
                continue;
            }
            self.nodes[n].next_timeout = None;
            self.nodes[n].router.handle_timeout(now);
            self.drain(n);
        }
        if self.check_loops && !self.changed.is_empty() {
            let mut changed = std::mem::take(&mut self.changed);
            changed.sort_unstable();
            changed.dedup();
            for (n, d) in changed {
                self.loop_walks += 1;
                self.check_no_loop_from(n, d);
            }
        }
        true
    }

    /// Steps until `until` (simulated, since the start) or until `done` holds. `done` is
    /// evaluated at most once per simulated millisecond, and only after some FIB changed;
    /// the returned time is that of the last FIB change before `done` held (the state has
    /// not changed since).
    pub(crate) fn run_until(
        &mut self,
        until: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Option<Duration> {
        let deadline = self.base + until;
        let mut checked = self.fib_epoch();
        let mut last_check = None;
        let mut changed_at = self.now;
        if done(self) {
            return Some(self.elapsed());
        }
        while self.now < deadline {
            let before = self.fib_epoch();
            if !self.step() {
                break;
            }
            if self.fib_epoch() != before {
                changed_at = self.now;
            }
            let due = last_check.is_none_or(|t| self.now >= t + Duration::from_millis(1));
            if self.fib_epoch() != checked && due {
                checked = self.fib_epoch();
                last_check = Some(self.now);
                if done(self) {
                    return Some(changed_at - self.base);
                }
            }
        }
        if self.fib_epoch() != checked && done(self) {
            return Some(changed_at - self.base);
        }
        None
    }

    /// Steps until `until` simulated time since the start.
    pub(crate) fn run_for(&mut self, d: Duration) {
        let deadline = self.now + d;
        while self.peek_next().is_some_and(|t| t <= deadline) {
            self.step();
        }
        self.now = self.now.max(deadline);
    }

    fn peek_next(&self) -> Option<Instant> {
        let m = self.queue.peek().map(|m| m.0.0);
        let t = self.timers.peek().map(|r| r.0.0);
        [m, t].into_iter().flatten().min()
    }

    fn fib_epoch(&self) -> u64 {
        self.fib_changes
    }

    /// Drains a node's outputs into the network.
    pub(crate) fn drain(&mut self, n: usize) {
        if !self.nodes[n].alive {
            return;
        }
        let now = self.now;
        while let Some(t) = self.nodes[n].router.poll_transmit() {
            let id = (t.peer.0 & 0xffff_ffff) as usize;
            let Some(l) = self.links.get(id) else {
                panic!("transmit to unknown peer {:?}", t.peer)
            };
            assert!(l.up && l.peer_id(id) == t.peer, "transmit to a closed link");
            assert!(l.a == n || l.b == n);
            self.frames += 1;
            let ty = match t.tlv {
                Tlv::Hello(_) => 0,
                Tlv::Ihu(_) => 1,
                Tlv::Update(u) if u.metric.is_infinite() => 3,
                Tlv::Update(_) => 2,
                Tlv::RouteRequest(_) => 4,
                Tlv::SeqnoRequest(_) => 5,
            };
            self.by_type[ty] += 1;
            if self.loss > 0.0 && self.rng.chance(self.loss) {
                continue;
            }
            let mut bytes = BytesMut::with_capacity(t.tlv.frame_len());
            t.tlv.encode_frame(&mut bytes);
            let dir = usize::from(l.a != n);
            let mut at = now + l.latency;
            if let Some(last) = l.last[dir] {
                at = at.max(last);
            }
            let to = l.other(n);
            let epoch = l.epoch;
            self.links[id].last[dir] = Some(at);
            self.seq += 1;
            let m = InFlight {
                to,
                link: id,
                epoch,
                bytes: bytes.to_vec(),
            };
            let slot = match self.free.pop() {
                Some(i) => {
                    self.slab[i] = Some(m);
                    i
                }
                None => {
                    self.slab.push(Some(m));
                    self.slab.len() - 1
                }
            };
            self.queue.push(Reverse((at, self.seq, slot)));
        }
        while let Some(c) = self.nodes[n].router.poll_fib_change() {
            let d = *self
                .owner
                .get(&c.subnet)
                .expect("routes only to simulated nodes");
            let node = &mut self.nodes[n];
            match (node.fib[d].is_some(), c.next_hop.is_some()) {
                (false, true) => node.fib_len += 1,
                (true, false) => node.fib_len -= 1,
                _ => {}
            }
            node.fib[d] = c.next_hop;
            if c.next_hop.is_some() {
                self.changed.push((n, d));
            }
            self.fib_changes += 1;
        }
        let mut dead = Vec::new();
        while let Some(e) = self.nodes[n].router.poll_event() {
            self.events.push((now - self.base, n, e));
            if let Event::PeerDead(p) = e {
                dead.push((p.0 & 0xffff_ffff) as usize);
            }
        }
        // The driver closes the connection of a dead peer.
        for l in dead {
            self.link_down(l);
        }
        let t = self.nodes[n].router.poll_timeout();
        if t != self.nodes[n].next_timeout {
            self.nodes[n].next_timeout = t;
            if let Some(t) = t {
                self.timers.push(Reverse((t, n)));
            }
        }
    }

    /// The node a FIB entry of node `n` forwards to, if any.
    pub(crate) fn next_node(&self, n: usize, d: usize) -> Option<usize> {
        let p = self.nodes[n].fib[d].as_ref()?;
        let id = (p.0 & 0xffff_ffff) as usize;
        let l = &self.links[id];
        assert!(
            l.up && l.peer_id(id) == *p,
            "node {n} forwards to node {d} on a closed link"
        );
        Some(l.other(n))
    }

    /// Walks next hops towards `d` from `start`: panics on a loop. A new loop must contain a
    /// changed entry, so walking from every node whose entry changed finds any loop.
    fn check_no_loop_from(&self, start: usize, d: usize) {
        let mut cur = start;
        let mut path = vec![start];
        while cur != d && self.nodes[cur].alive {
            let Some(next) = self.next_node(cur, d) else {
                return;
            };
            assert!(
                path.len() <= self.nodes.len() && !path.contains(&next),
                "forwarding loop towards node {d} at t={:?}: {path:?} -> {next}",
                self.elapsed()
            );
            path.push(next);
            cur = next;
        }
    }

    /// Walks next hops towards `d` from every live node: panics on a loop. Returns, per node,
    /// whether packets for `d` reach its owner.
    pub(crate) fn walk_all(&self, d: usize) -> Vec<bool> {
        const UNKNOWN: u8 = 0;
        const ON_PATH: u8 = 1;
        const REACH: u8 = 2;
        const DROP: u8 = 3;
        let owner = Some(d);
        let mut state = vec![UNKNOWN; self.nodes.len()];
        let mut path = Vec::new();
        for start in 0..self.nodes.len() {
            if state[start] != UNKNOWN {
                continue;
            }
            let mut cur = start;
            let result = loop {
                if state[cur] == REACH || state[cur] == DROP {
                    break state[cur];
                }
                if state[cur] == ON_PATH {
                    let names: Vec<usize> = path.clone();
                    panic!(
                        "forwarding loop towards node {d} at t={:?}: {names:?} -> {cur}",
                        self.elapsed()
                    );
                }
                if Some(cur) == owner && self.nodes[cur].alive {
                    break REACH;
                }
                if !self.nodes[cur].alive {
                    break DROP;
                }
                state[cur] = ON_PATH;
                path.push(cur);
                match self.next_node(cur, d) {
                    Some(next) => cur = next,
                    None => break DROP,
                }
            };
            for p in path.drain(..) {
                state[p] = result;
            }
            if state[start] == UNKNOWN {
                state[start] = result;
            }
        }
        state.into_iter().map(|s| s == REACH).collect()
    }

    /// Whether every live node reaches every other live node.
    pub(crate) fn all_reach_all(&self) -> bool {
        let alive = self.nodes.iter().filter(|n| n.alive).count();
        // Cheap necessary condition first: every live node has a route to every other.
        if self.nodes.iter().any(|n| n.alive && n.fib_len + 1 < alive) {
            return false;
        }
        self.unreachable_pairs() == 0
    }

    /// Number of (source, destination) pairs of live nodes without a working path.
    pub(crate) fn unreachable_pairs(&self) -> usize {
        let mut missing = 0;
        for (o, node) in self.nodes.iter().enumerate() {
            if !node.alive {
                continue;
            }
            let reach = self.walk_all(o);
            missing += (0..self.nodes.len())
                .filter(|&n| n != o && self.nodes[n].alive && !reach[n])
                .count();
        }
        missing
    }

    /// How many (node, destination) FIB entries forward over each link.
    pub(crate) fn link_usage(&self) -> Vec<usize> {
        let mut use_ = vec![0; self.links.len()];
        for node in &self.nodes {
            for p in node.fib.iter().flatten() {
                use_[(p.0 & 0xffff_ffff) as usize] += 1;
            }
        }
        use_
    }

    /// Whether the graph of up links (live nodes) stays connected without link `skip`.
    pub(crate) fn connected_without(&self, skip: usize) -> bool {
        let n = self.nodes.len();
        let mut seen = vec![false; n];
        let Some(start) = (0..n).find(|&i| self.nodes[i].alive) else {
            return true;
        };
        let mut q = VecDeque::from([start]);
        seen[start] = true;
        while let Some(x) = q.pop_front() {
            for (i, l) in self.links.iter().enumerate() {
                if i == skip || !l.up || (l.a != x && l.b != x) {
                    continue;
                }
                let y = l.other(x);
                if self.nodes[y].alive && !seen[y] {
                    seen[y] = true;
                    q.push_back(y);
                }
            }
        }
        (0..n).all(|i| seen[i] || !self.nodes[i].alive)
    }
}

/// Topologies.
pub(crate) mod topo {
    use super::*;

    pub(crate) fn line(net: &mut Net, lat: u64) {
        for i in 1..net.nodes.len() {
            net.connect(i - 1, i, lat);
        }
    }

    pub(crate) fn ring(net: &mut Net, lat: u64) {
        line(net, lat);
        let n = net.nodes.len();
        net.connect(n - 1, 0, lat);
    }

    pub(crate) fn grid(net: &mut Net, w: usize, lat: u64) {
        let n = net.nodes.len();
        for i in 0..n {
            if i % w + 1 < w && i + 1 < n {
                net.connect(i, i + 1, lat);
            }
            if i + w < n {
                net.connect(i, i + w, lat);
            }
        }
    }

    /// A random connected graph: a random spanning tree plus `extra` random edges.
    pub(crate) fn random(net: &mut Net, extra: usize, lat: u64) {
        let n = net.nodes.len();
        let mut edges = std::collections::HashSet::new();
        for i in 1..n {
            let j = net.rng.below(i as u64) as usize;
            edges.insert((j, i));
            net.connect(j, i, lat);
        }
        let mut added = 0;
        while added < extra {
            let a = net.rng.below(n as u64) as usize;
            let b = net.rng.below(n as u64) as usize;
            let (a, b) = (a.min(b), a.max(b));
            if a == b || !edges.insert((a, b)) {
                continue;
            }
            net.connect(a, b, lat);
            added += 1;
        }
    }
}
