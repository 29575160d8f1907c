//! A small network of Babel `Router`s (3 to 5 nodes) driven like `tests/sim/net.rs`: the
//! fuzzer picks the links and their latencies, then any sequence of link cuts and repairs,
//! new links, lossy links (every k-th frame dropped), silent node deaths, restarts with a new
//! router id, and time running. All the while every node sends traffic to every other (it asks
//! for the routes it lacks and reports the use of those it has, as the data plane does: remote
//! routes exist on demand). Then the network runs with no further input, loss off, until it
//! has converged.
//!
//! Invariants:
//! * no panic; no TLV to a link that is closed; no forwarding-table entry over a closed link
//!   or for a prefix no node announces;
//! * no forwarding loop once converged (below). Transient loops do occur: a node that switches
//!   to a route of a new router id (a restarted node's next incarnation) through a neighbour
//!   it had advertised the old one to tells that neighbour nothing (split horizon), and the
//!   neighbour's stale entry, still feasible, can be selected when its own route goes, until
//!   it expires; a lost retraction does the same. `FUZZ_STRICT_LOOPS=1` makes every transient
//!   loop a failure (next hops walked from every changed entry after every event, as the
//!   simulator does), `FUZZ_STRICT_LOOPS=lossless` only those in runs without loss;
//! * after the input, within 300 simulated seconds, the network converges: every pair of live
//!   nodes that the up links connect routes to each other (following next hops from the
//!   source reaches the destination) and no next-hop walk from any node to any destination
//!   loops, continuously for 10 seconds (longer than the dead-peer threshold plus the longest
//!   round trip, so a pending failure would show).
#![no_main]

use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::{Result, Unstructured};
use hyphae_proto::babel::Config;
use hyphae_proto::{Event, LinkKind, PeerId, Router};
use hyphae_wire::babel::Tlv;
use hyphae_wire::identity::PublicKey;
use hyphae_wire::{RouterId, Subnet};
use libfuzzer_sys::fuzz_target;

const MAX_NODES: usize = 5;
const MAX_LINKS: usize = 8;
const MAX_OPS: usize = 24;
const HELLO: Duration = Duration::from_secs(3);
/// Longer than a Hello interval plus the longest round trip (2 s).
const DEAD_PEER: Duration = Duration::from_millis(6500);
/// Simulated time the input may spend (keeps an execution short).
const INPUT_TIME: Duration = Duration::from_secs(30);
const CONVERGE_LIMIT: Duration = Duration::from_secs(300);
const STABLE_FOR: Duration = Duration::from_secs(10);

struct Keys {
    keys: [PublicKey; MAX_NODES],
    owner: HashMap<Subnet, usize>,
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        let keys = std::array::from_fn(|i| PublicKey::from([0x40 + i as u8; 32]));
        let owner = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.subnet(), i))
            .collect();
        Keys { keys, owner }
    })
}

fn base() -> Instant {
    static B: OnceLock<Instant> = OnceLock::new();
    *B.get_or_init(Instant::now)
}

/// `FUZZ_STRICT_LOOPS=1`: also fail on a transient loop, after every event (as the simulator
/// does); `=lossless`: only while no frame was lost. Off by default: see the module docs.
fn strict_loops() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("FUZZ_STRICT_LOOPS").is_some())
}

fn strict_loops_lossless() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var("FUZZ_STRICT_LOOPS").as_deref() == Ok("lossless"))
}

fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

struct Node {
    router: Router,
    alive: bool,
    incarnation: u8,
    /// The node's forwarding table by destination node, from `poll_fib_change`.
    fib: [Option<PeerId>; MAX_NODES],
}

struct Link {
    a: usize,
    b: usize,
    up: bool,
    epoch: u64,
    latency: Duration,
    /// Drop every k-th frame (0: none), per direction counters.
    drop_every: u32,
    sent: [u32; 2],
    /// Frames in flight per direction (a→b, b→a): (delivery time, epoch, TLV), FIFO.
    queue: [VecDeque<(Instant, u64, Tlv)>; 2],
}

impl Link {
    fn peer_id(&self, id: usize) -> PeerId {
        PeerId((self.epoch << 32) | id as u64)
    }

    fn other(&self, n: usize) -> usize {
        if n == self.a { self.b } else { self.a }
    }
}

/// What happens next: a frame arrives (link, direction) or a node's timer fires.
#[derive(Clone, Copy)]
enum Due {
    Frame(usize, usize),
    Timer(usize),
}

struct Net {
    now: Instant,
    config: Config,
    nodes: Vec<Node>,
    links: Vec<Link>,
    /// (node, destination) entries changed since the last loop check.
    changed: Vec<(usize, usize)>,
    /// A frame was lost (only matters for `FUZZ_STRICT_LOOPS`).
    lossy: bool,
}

impl Net {
    fn new(n: usize) -> Self {
        let now = base();
        let config = Config {
            hello_interval: HELLO,
            dead_peer_threshold: Some(DEAD_PEER),
            update_interval: Duration::from_secs(20),
            max_routes: 64,
            max_routes_per_peer: 32,
            max_cache_entries: 64,
            hash_seed: 1,
        };
        let mut net = Self {
            now,
            nodes: Vec::new(),
            links: Vec::new(),
            changed: Vec::new(),
            lossy: false,
            config,
        };
        for i in 0..n {
            let router = Router::new(now, net.config.clone(), rid(i, 0));
            net.nodes.push(Node {
                router,
                alive: true,
                incarnation: 0,
                fib: [None; MAX_NODES],
            });
        }
        for i in 0..n {
            net.drain(i);
        }
        net
    }

    fn connect(&mut self, a: usize, b: usize, latency: Duration) {
        if self.links.len() >= MAX_LINKS || a == b {
            return;
        }
        self.links.push(Link {
            a,
            b,
            up: false,
            epoch: 0,
            latency,
            drop_every: 0,
            sent: [0; 2],
            queue: [VecDeque::new(), VecDeque::new()],
        });
        self.link_up(self.links.len() - 1);
    }

    fn link_up(&mut self, id: usize) {
        let now = self.now;
        let l = &mut self.links[id];
        if l.up {
            return;
        }
        l.up = true;
        l.epoch += 1;
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

    fn link_down(&mut self, id: usize) {
        let now = self.now;
        let l = &mut self.links[id];
        if !l.up {
            return;
        }
        l.up = false;
        l.queue = [VecDeque::new(), VecDeque::new()];
        let (a, b, pid) = (l.a, l.b, l.peer_id(id));
        for n in [a, b] {
            if self.nodes[n].alive {
                self.nodes[n].router.handle_peer_down(now, pid);
            }
        }
        self.drain(a);
        self.drain(b);
    }

    fn kill(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.alive = false;
        node.fib = [None; MAX_NODES];
    }

    fn restart(&mut self, n: usize) {
        let ids: Vec<usize> = (0..self.links.len())
            .filter(|&i| self.links[i].up && (self.links[i].a == n || self.links[i].b == n))
            .collect();
        for &l in &ids {
            self.link_down(l);
        }
        let node = &mut self.nodes[n];
        node.incarnation = node.incarnation.wrapping_add(1);
        node.router = Router::new(self.now, self.config.clone(), rid(n, node.incarnation));
        node.alive = true;
        node.fib = [None; MAX_NODES];
        self.drain(n);
        for l in ids {
            self.link_up(l);
        }
    }

    /// Drains a node's outputs into the network.
    fn drain(&mut self, n: usize) {
        if !self.nodes[n].alive {
            return;
        }
        let now = self.now;
        while let Some(t) = self.nodes[n].router.poll_transmit() {
            let id = (t.peer.0 & 0xffff_ffff) as usize;
            let l = self
                .links
                .get_mut(id)
                .expect("transmit to a link that never was");
            assert!(
                l.up && l.peer_id(id) == t.peer && (l.a == n || l.b == n),
                "node {n} transmits to a closed link: {t:?}"
            );
            if trace() && !matches!(t.tlv, Tlv::Hello(_) | Tlv::Ihu(_)) {
                eprintln!("  {:?} node {n} -> link {id}: {:?}", now - base(), t.tlv);
            }
            let dir = usize::from(l.a != n);
            l.sent[dir] = l.sent[dir].wrapping_add(1);
            if l.drop_every > 0 && l.sent[dir].is_multiple_of(l.drop_every) {
                self.lossy = true;
                continue;
            }
            let mut at = now + l.latency;
            if let Some(&(last, _, _)) = l.queue[dir].back() {
                at = at.max(last);
            }
            let epoch = l.epoch;
            l.queue[dir].push_back((at, epoch, t.tlv));
        }
        while let Some(c) = self.nodes[n].router.poll_fib_change() {
            let d = *keys().owner.get(&c.subnet).unwrap_or_else(|| {
                panic!("node {n} routes {:?}, which no node announces", c.subnet)
            });
            assert!(d < self.nodes.len(), "route to a node that does not exist");
            assert_ne!(d, n, "node {n} has a route to itself");
            if let Some(p) = c.next_hop {
                let id = (p.0 & 0xffff_ffff) as usize;
                let l = &self.links[id];
                assert!(
                    l.up && l.peer_id(id) == p,
                    "node {n}: FIB entry over a closed link"
                );
                self.changed.push((n, d));
            }
            if trace() {
                eprintln!(
                    "  {:?} node {n} fib {d} -> {:?}",
                    self.now - base(),
                    c.next_hop
                );
            }
            self.nodes[n].fib[d] = c.next_hop;
        }
        let mut dead = Vec::new();
        while let Some(e) = self.nodes[n].router.poll_event() {
            if let Event::PeerDead(p) = e {
                dead.push((p.0 & 0xffff_ffff) as usize);
            }
        }
        // The driver closes the connection of a dead peer.
        for l in dead {
            self.link_down(l);
        }
    }

    /// Traffic between every pair: each live node asks for a route to every other node it has
    /// none for (`request_route`, as the data plane does for a packet without a route) and
    /// reports the use of the routes it has (`handle_route_used`, which refreshes one about to
    /// expire). Routes to remote nodes exist only on demand (WIRE.md 3.4).
    fn demand(&mut self) {
        let now = self.now;
        for s in 0..self.nodes.len() {
            if !self.nodes[s].alive {
                continue;
            }
            for d in 0..self.nodes.len() {
                if d == s {
                    continue;
                }
                let subnet = keys().keys[d].subnet();
                let r = &mut self.nodes[s].router;
                if r.selected_route(&subnet).is_some() {
                    r.handle_route_used(now, subnet);
                } else {
                    r.request_route(now, subnet);
                }
            }
            self.drain(s);
        }
    }

    /// Runs to `until` with traffic: [`Net::demand`] every 500 ms.
    fn run_with_traffic(&mut self, until: Instant) {
        while self.now < until {
            self.demand();
            self.check_loops();
            let next = (self.now + Duration::from_millis(500)).min(until);
            self.run_until(next);
        }
    }

    /// The earliest pending event: a frame (link, direction) or a node timer.
    fn next_event(&mut self) -> Option<(Instant, Due)> {
        let mut best: Option<(Instant, Due)> = None;
        for (i, l) in self.links.iter().enumerate() {
            for dir in 0..2 {
                if let Some(&(at, _, _)) = l.queue[dir].front()
                    && best.is_none_or(|b| at < b.0)
                {
                    best = Some((at, Due::Frame(i, dir)));
                }
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.alive {
                continue;
            }
            if let Some(at) = n.router.poll_timeout()
                && best.is_none_or(|b| at < b.0)
            {
                best = Some((at, Due::Timer(i)));
            }
        }
        best
    }

    /// Processes events up to `until`; then the clock reads `until`.
    fn run_until(&mut self, until: Instant) {
        while let Some((at, what)) = self.next_event() {
            if at > until {
                break;
            }
            self.now = self.now.max(at);
            let now = self.now;
            match what {
                Due::Frame(id, dir) => {
                    let l = &mut self.links[id];
                    let Some((_, epoch, tlv)) = l.queue[dir].pop_front() else {
                        continue;
                    };
                    let to = if dir == 0 { l.b } else { l.a };
                    let peer = l.peer_id(id);
                    if !l.up || l.epoch != epoch || !self.nodes[to].alive {
                        continue;
                    }
                    self.nodes[to].router.handle_tlv(now, peer, tlv);
                    self.drain(to);
                }
                Due::Timer(n) => {
                    self.nodes[n].router.handle_timeout(now);
                    self.drain(n);
                }
            }
            self.check_loops();
        }
        self.now = self.now.max(until);
    }

    fn next_node(&self, n: usize, d: usize) -> Option<usize> {
        let p = self.nodes[n].fib[d]?;
        let id = (p.0 & 0xffff_ffff) as usize;
        Some(self.links[id].other(n))
    }

    /// Walks next hops from every changed entry: panics on a loop (a new loop contains a
    /// changed entry).
    fn check_loops(&mut self) {
        let changed = std::mem::take(&mut self.changed);
        if !strict_loops() || (self.lossy && strict_loops_lossless()) {
            return;
        }
        for (start, d) in changed {
            let mut cur = start;
            let mut hops = 0;
            while cur != d && self.nodes[cur].alive {
                let Some(next) = self.next_node(cur, d) else {
                    break;
                };
                hops += 1;
                assert!(
                    hops <= self.nodes.len(),
                    "forwarding loop towards node {d} from node {start} at {:?}",
                    self.now - base()
                );
                cur = next;
            }
        }
    }

    /// Whether following next hops from some live node towards some destination loops.
    fn has_loop(&self) -> bool {
        let n = self.nodes.len();
        (0..n).any(|start| {
            (0..n).any(|d| {
                let mut cur = start;
                let mut hops = 0;
                while cur != d && self.nodes[cur].alive {
                    let Some(next) = self.next_node(cur, d) else {
                        return false;
                    };
                    hops += 1;
                    if hops > n {
                        return true;
                    }
                    cur = next;
                }
                false
            })
        })
    }

    /// Connected components of live nodes over up links.
    fn components(&self) -> [usize; MAX_NODES] {
        let mut comp: [usize; MAX_NODES] = std::array::from_fn(|i| i);
        loop {
            let mut changed = false;
            for l in &self.links {
                if l.up && self.nodes[l.a].alive && self.nodes[l.b].alive {
                    let m = comp[l.a].min(comp[l.b]);
                    if comp[l.a] != m || comp[l.b] != m {
                        comp[l.a] = m;
                        comp[l.b] = m;
                        changed = true;
                    }
                }
            }
            if !changed {
                return comp;
            }
        }
    }

    /// The first pair of connected live nodes whose packets do not arrive.
    fn unrouted(&self) -> Option<(usize, usize)> {
        let comp = self.components();
        let n = self.nodes.len();
        for s in 0..n {
            for d in 0..n {
                if s == d || !self.nodes[s].alive || !self.nodes[d].alive || comp[s] != comp[d] {
                    continue;
                }
                let mut cur = s;
                let mut hops = 0;
                while cur != d && hops <= n {
                    match self.next_node(cur, d) {
                        Some(next) if self.nodes[next].alive => cur = next,
                        _ => break,
                    }
                    hops += 1;
                }
                if cur != d {
                    return Some((s, d));
                }
            }
        }
        None
    }
}

fn rid(n: usize, incarnation: u8) -> RouterId {
    RouterId::new(&keys().keys[n], 0, [n as u8, incarnation, 0, 0, 0, 1])
}

fn latency(u: &mut Unstructured<'_>) -> Result<Duration> {
    Ok(Duration::from_millis(match u.int_in_range(0u8..=3)? {
        0 => 1,
        1 => u.int_in_range(1u64..=20)?,
        2 => u.int_in_range(1u64..=300)?,
        _ => u.int_in_range(1u64..=1000)?,
    }))
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let n = usize::from(u.int_in_range(3u8..=MAX_NODES as u8)?);
    let mut net = Net::new(n);
    // Initial links: a bit per pair.
    let mask: u16 = u.arbitrary()?;
    let mut bit = 0;
    for a in 0..n {
        for b in a + 1..n {
            if mask & (1 << bit) != 0 {
                let lat = latency(u)?;
                net.connect(a, b, lat);
            }
            bit += 1;
        }
    }
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let links = net.links.len();
        match u.int_in_range(0u8..=9)? {
            0 => {
                let a = usize::from(u.int_in_range(0..=n as u8 - 1)?);
                let b = usize::from(u.int_in_range(0..=n as u8 - 1)?);
                let lat = latency(u)?;
                if trace() {
                    eprintln!("{:?} connect {a} {b} {lat:?}", net.now - base());
                }
                net.connect(a, b, lat);
            }
            1 if links > 0 => {
                let l = u.choose_index(links)?;
                if trace() {
                    eprintln!("{:?} link {l} down", net.now - base());
                }
                net.link_down(l);
            }
            2 if links > 0 => {
                let l = u.choose_index(links)?;
                if trace() {
                    eprintln!("{:?} link {l} up", net.now - base());
                }
                net.link_up(l);
            }
            3 => {
                let x = usize::from(u.int_in_range(0..=n as u8 - 1)?);
                if trace() {
                    eprintln!("{:?} kill {x}", net.now - base());
                }
                net.kill(x);
            }
            4 => {
                let x = usize::from(u.int_in_range(0..=n as u8 - 1)?);
                if trace() {
                    eprintln!("{:?} restart {x}", net.now - base());
                }
                net.restart(x);
            }
            5 if links > 0 => {
                let l = u.choose_index(links)?;
                let k = [0, 2, 3, 5][usize::from(u.int_in_range(0u8..=3)?)];
                if trace() {
                    eprintln!("{:?} link {l} drops every {k}", net.now - base());
                }
                net.links[l].drop_every = k;
            }
            _ => {
                let ms = match u.int_in_range(0u8..=2)? {
                    0 => u.int_in_range(0u64..=50)?,
                    1 => u.int_in_range(0u64..=2_000)?,
                    _ => u.int_in_range(0u64..=10_000)?,
                };
                let until = (net.now + Duration::from_millis(ms)).min(base() + INPUT_TIME);
                net.run_with_traffic(until);
            }
        }
        net.check_loops();
    }
    // No more input: loss off, run until every connected pair routes.
    for l in &mut net.links {
        l.drop_every = 0;
    }
    let start = net.now;
    let mut routed_since = None;
    while net.now < start + CONVERGE_LIMIT {
        let until = net.now + Duration::from_millis(500);
        net.run_with_traffic(until);
        match net.unrouted() {
            Some(_) => routed_since = None,
            None if net.has_loop() => routed_since = None,
            None => {
                let since = *routed_since.get_or_insert(net.now);
                if net.now >= since + STABLE_FOR {
                    if trace() {
                        eprintln!("converged at {:?}", since - base());
                    }
                    return Ok(());
                }
            }
        }
    }
    let (s, d) = net.unrouted().unwrap_or_default();
    panic!(
        "no convergence within {CONVERGE_LIMIT:?} after the input (every connected pair routing, \
         no loop, for {STABLE_FOR:?}): node {s} does not reach node {d}, loop: {}",
        net.has_loop()
    );
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
