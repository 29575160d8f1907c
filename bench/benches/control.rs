//! Control-plane throughput on one core: Update TLVs decoded from frames and handled by one
//! `Router` that knows 10 000 routes (each from two neighbours).
//!
//! * `refresh`: every Update repeats what the router already has (the steady state: lookup,
//!   feasibility, expiry timer moved).
//! * `metric_change`: every Update moves the selected route's metric by 100, so each one
//!   reruns selection and sends a triggered update to the three other peers.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hyphae_proto::babel::{Config, Router};
use hyphae_proto::{LinkKind, PeerId};
use hyphae_wire::babel::{Tlv, Update};
use hyphae_wire::deframer::{Deframer, Frame};
use hyphae_wire::identity::PublicKey;
use hyphae_wire::{Interval, Metric, RouterId, SeqNo};

const ROUTES: usize = 10_000;

fn key(i: usize) -> PublicKey {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    b[31] = 0x5a;
    PublicKey::from(b)
}

fn update(pk: &PublicKey, metric: u16) -> Tlv {
    Tlv::Update(Update {
        flags: 0,
        interval: Interval::from_secs(300),
        seqno: SeqNo(1),
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

criterion_group!(benches, control);
criterion_main!(benches);
