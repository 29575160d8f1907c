//! Control-plane throughput on one core: Update TLVs decoded from frames and handled by one
//! `Router` that knows 10 000 routes (each from two neighbours).
//!
//! * `refresh`: every Update repeats what the router already has (the steady state: lookup,
//!   feasibility, expiry timer moved).
//! * `metric_change`: every Update moves the selected route's metric by 100, so each one
//!   reruns selection and sends a triggered update to the three other peers.
//!
//! And what a change of next hop costs the control thread with 100 000 routes installed, from
//! the Update TLVs to the published forwarding table and route keys (as the control thread's
//! flush: FIB changes applied, the table published, then the route keys):
//!
//! * `publish_one_change_100k_routes`: one route moves to another neighbour.
//! * `flap_10k_of_100k_routes`: 10 000 routes move, in batches of 256 TLVs per flush: the
//!   control thread's time per second of a peer flapping 10 000 routes/s.
//! * `route_keys_publish_one_change_100k`: the route-key publication alone, one subnet's key
//!   changed.
//!
//! A route moves with two Updates carrying the source's next seqno: the neighbour that takes
//! over advertises metric 10 (no switch yet: equal to the current route's), then the current
//! one advertises 500 (the switch). So a flap of 10 000 routes is 20 000 TLVs. A moved route
//! keeps its source, so its key does not change and the route keys are not republished
//! (`route_keys_publish_one_change_100k` measures a key that does change).

use std::hint::black_box;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hyphae_proto::babel::{Config, Router};
use hyphae_proto::snapshot::SnapshotWriter;
use hyphae_proto::{FibWriter, LinkKind, PeerId};
use hyphae_router::daemon::{RouteKeys, publish_route_keys};
use hyphae_wire::babel::{Tlv, Update};
use hyphae_wire::deframer::{Deframer, Frame};
use hyphae_wire::identity::PublicKey;
use hyphae_wire::{Interval, Metric, RouterId, SeqNo, Subnet};

const ROUTES: usize = 10_000;
/// Routes installed for the publish benchmarks.
const BIG: usize = 100_000;
/// Routes that flap.
const FLAP: usize = 10_000;
/// TLVs handled per flush (the control thread's batch).
const FLUSH_BATCH: usize = 256;

fn key(i: usize) -> PublicKey {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    b[31] = 0x5a;
    PublicKey::from(b)
}

fn update(pk: &PublicKey, metric: u16) -> Tlv {
    update_seq(pk, 1, metric)
}

fn update_seq(pk: &PublicKey, seqno: u16, metric: u16) -> Tlv {
    Tlv::Update(Update {
        flags: 0,
        interval: Interval::from_secs(300),
        seqno: SeqNo(seqno),
        metric: Metric(metric),
        subnet: pk.subnet(),
        router_id: RouterId::new(pk, 0, [1; 6]),
    })
}

fn setup(t0: Instant) -> (Router, Vec<PublicKey>) {
    let me = PublicKey::from([0xee; 32]);
    let cfg = Config {
        hash_seed: 0x1234,
        ..Config::default()
    };
    let mut r = Router::new(t0, cfg, RouterId::new(&me, 0, [0; 6]));
    for p in 1..=4 {
        r.handle_peer_up(t0, PeerId(p), LinkKind::TcpV6);
    }
    let keys: Vec<PublicKey> = (0..ROUTES).map(key).collect();
    for k in &keys {
        r.handle_tlv(t0, PeerId(1), update(k, 100));
        r.handle_tlv(t0, PeerId(2), update(k, 300));
    }
    while r.poll_transmit().is_some() {}
    while r.poll_fib_change().is_some() {}
    assert_eq!(r.table_sizes().0, 2 * ROUTES);
    (r, keys)
}

fn frames(keys: &[PublicKey], metric: impl Fn(usize) -> u16) -> BytesMut {
    let mut buf = BytesMut::new();
    for (i, k) in keys.iter().enumerate() {
        update(k, metric(i)).encode_frame(&mut buf);
    }
    buf
}

/// Deframes every Update in `buf` and hands it to the router; returns frames sent.
fn process(r: &mut Router, now: Instant, mut buf: BytesMut) -> usize {
    let mut deframer = Deframer::new();
    while let Ok(Some(Frame::Control(tlv))) = deframer.next_frame(&mut buf) {
        r.handle_tlv(now, PeerId(1), tlv);
    }
    let mut sent = 0;
    while r.poll_transmit().is_some() {
        sent += 1;
    }
    while r.poll_fib_change().is_some() {}
    sent
}

fn control(c: &mut Criterion) {
    let t0 = Instant::now();
    let (mut r, keys) = setup(t0);
    let refresh = frames(&keys, |_| 100);
    let worse = frames(&keys, |_| 200);
    let mut g = c.benchmark_group("control");
    g.throughput(Throughput::Elements(ROUTES as u64));
    let mut tick = 0u64;
    g.bench_function("updates_refresh_10k_routes", |b| {
        b.iter_batched(
            || refresh.clone(),
            |buf| {
                tick += 1;
                let now = t0 + Duration::from_micros(tick);
                black_box(process(&mut r, now, buf))
            },
            BatchSize::LargeInput,
        )
    });
    let mut flip = false;
    g.bench_function("updates_metric_change_10k_routes", |b| {
        b.iter_batched(
            || {
                flip = !flip;
                if flip { worse.clone() } else { refresh.clone() }
            },
            |buf| {
                tick += 1;
                let now = t0 + Duration::from_micros(tick);
                let sent = process(&mut r, now, buf);
                assert_eq!(sent, 3 * ROUTES, "a triggered update per route to 3 peers");
                black_box(sent)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// The control thread's state for the publish benchmarks: a router with [`BIG`] routes, the
/// first [`FLAP`] from peers 1 (selected) and 2, the rest from peer 3; the forwarding table
/// and the route keys it published.
struct Node {
    router: Router,
    fib: FibWriter,
    keys: SnapshotWriter<RouteKeys>,
    /// What the workers read.
    published_keys: ArcSwap<RouteKeys>,
    tick: u64,
    t0: Instant,
}

/// The neighbours' side: the Updates that move the flapping routes.
struct Flapper {
    pks: Vec<PublicKey>,
    /// Moves so far of each flapping route.
    moves: Vec<u16>,
}

impl Node {
    fn new() -> (Self, Flapper) {
        let t0 = Instant::now();
        let me = PublicKey::from([0xee; 32]);
        let cfg = Config {
            hash_seed: 0x1234,
            ..Config::default()
        };
        let mut router = Router::new(t0, cfg, RouterId::new(&me, 0, [0; 6]));
        for p in 1..=3 {
            router.handle_peer_up(t0, PeerId(p), LinkKind::TcpV6);
        }
        let pks: Vec<PublicKey> = (0..BIG).map(key).collect();
        for (i, k) in pks.iter().enumerate() {
            if i < FLAP {
                router.handle_tlv(t0, PeerId(1), update(k, 10));
                router.handle_tlv(t0, PeerId(2), update(k, 500));
            } else {
                router.handle_tlv(t0, PeerId(3), update(k, 100));
            }
        }
        let mut n = Self {
            router,
            fib: FibWriter::new(0xf1b),
            keys: SnapshotWriter::new(RouteKeys::default()),
            published_keys: ArcSwap::default(),
            tick: 0,
            t0,
        };
        assert_eq!(n.flush(), BIG);
        assert_eq!(n.fib.staged().len(), BIG);
        let moves = vec![0; FLAP];
        (n, Flapper { pks, moves })
    }
}

impl Flapper {
    /// The two Updates that move flapping route `i` to the other neighbour.
    fn move_tlvs(&mut self, i: usize) -> [(PeerId, Tlv); 2] {
        let m = self.moves[i];
        self.moves[i] = m.wrapping_add(1);
        let (current, next) = match m % 2 {
            0 => (PeerId(1), PeerId(2)),
            _ => (PeerId(2), PeerId(1)),
        };
        let seqno = m.wrapping_add(2);
        let pk = &self.pks[i];
        [
            (next, update_seq(pk, seqno, 10)),
            (current, update_seq(pk, seqno, 500)),
        ]
    }

    /// The TLVs that move every flapping route: first every takeover, then every switch.
    fn flap_tlvs(&mut self) -> Vec<(PeerId, Tlv)> {
        let moves: Vec<_> = (0..FLAP).map(|i| self.move_tlvs(i)).collect();
        let (mut first, mut then) = (Vec::with_capacity(FLAP * 2), Vec::with_capacity(FLAP));
        for [a, b] in moves {
            first.push(a);
            then.push(b);
        }
        first.extend(then);
        first
    }
}

impl Node {
    /// Handles `tlvs` in batches of [`FLUSH_BATCH`], flushing after each; returns the FIB
    /// changes.
    fn run(&mut self, tlvs: Vec<(PeerId, Tlv)>) -> usize {
        self.tick += 1;
        let now = self.t0 + Duration::from_micros(self.tick);
        let mut changes = 0;
        let mut tlvs = tlvs.into_iter().peekable();
        while tlvs.peek().is_some() {
            for (peer, tlv) in tlvs.by_ref().take(FLUSH_BATCH) {
                self.router.handle_tlv(now, peer, tlv);
            }
            changes += self.flush();
        }
        changes
    }

    /// The control thread's flush, minus the sockets: transmits taken, FIB changes applied and
    /// published, then the route keys.
    fn flush(&mut self) -> usize {
        while self.router.poll_transmit().is_some() {}
        let mut changed: Vec<Subnet> = Vec::new();
        while let Some(ch) = self.router.poll_fib_change() {
            changed.push(ch.subnet);
            self.fib.apply(ch);
        }
        if !changed.is_empty() {
            self.fib.publish();
            let router = &self.router;
            publish_route_keys(
                &mut self.keys,
                &self.published_keys,
                |s| router.selected_route(s).map(|r| r.router_id.public_key()),
                &changed,
            );
        }
        changed.len()
    }
}

fn publish(c: &mut Criterion) {
    let (mut n, mut f) = Node::new();
    let reader = n.fib.reader();
    let mut g = c.benchmark_group("control");
    g.throughput(Throughput::Elements(1));
    let mut next = 0usize;
    g.bench_function("publish_one_change_100k_routes", |b| {
        b.iter_batched(
            || {
                next = (next + 1) % FLAP;
                f.move_tlvs(next).to_vec()
            },
            |tlvs| {
                let changes = n.run(tlvs);
                assert_eq!(changes, 1);
                changes
            },
            BatchSize::SmallInput,
        )
    });
    g.throughput(Throughput::Elements(FLAP as u64));
    g.bench_function("flap_10k_of_100k_routes", |b| {
        b.iter_batched(
            || f.flap_tlvs(),
            |tlvs| {
                let changes = n.run(tlvs);
                assert_eq!(changes, FLAP, "every flapping route moved");
                changes
            },
            BatchSize::PerIteration,
        )
    });
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    let other = key(BIG);
    g.bench_function("route_keys_publish_one_change_100k", |b| {
        b.iter(|| {
            let s = [f.pks[i % BIG].subnet()];
            // The subnet's key alternates between another node's and its own.
            let k = match (i / BIG) % 2 {
                0 => other,
                _ => f.pks[i % BIG],
            };
            i += 1;
            let published = publish_route_keys(&mut n.keys, &n.published_keys, |_| Some(k), &s);
            assert!(published);
        })
    });
    g.finish();
    assert_eq!(reader.snapshot().len(), BIG);
    assert_eq!(n.published_keys.load().len(), BIG);
}

criterion_group!(benches, control, publish);
criterion_main!(benches);
