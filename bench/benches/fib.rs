//! Forwarding-table lookups per second on one reader thread while another thread keeps
//! publishing new snapshots (10 000 `/64` routes; each publish changes one entry).

use std::hint::black_box;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hyphae_proto::{FibChange, FibWriter, PeerId};
use hyphae_wire::Subnet;

const ROUTES: usize = 10_000;
const BATCH: usize = 1_000;

fn subnet(i: usize) -> Subnet {
    // Spread over 400::/7 like real node addresses.
    let hi = 0x0400_0000_0000_0000_u64 | ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 7);
    Subnet::v6_64(Ipv6Addr::from(u128::from(hi) << 64))
}

fn dst(i: usize) -> Ipv6Addr {
    let base = match subnet(i).addr() {
        std::net::IpAddr::V6(a) => u128::from(a),
        std::net::IpAddr::V4(_) => 0,
    };
    Ipv6Addr::from(base | 0x1234_5678)
}

fn fib(c: &mut Criterion) {
    let mut w = FibWriter::new(0xf1b);
    for i in 0..ROUTES {
        w.apply(FibChange {
            subnet: subnet(i),
            next_hop: Some(PeerId(i as u64 % 8)),
        });
    }
    w.publish();
    let reader = w.reader();
    // Destinations in a scrambled order, plus some with no route.
    let dsts: Vec<Ipv6Addr> = (0..BATCH)
        .map(|i| {
            if i % 10 == 9 {
                Ipv6Addr::from(0x0500_u128 << 112 | i as u128)
            } else {
                dst((i * 7919) % ROUTES)
            }
        })
        .collect();

    let mut g = c.benchmark_group("fib");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("lookup_quiet_10k", |b| {
        b.iter(|| {
            let mut hits = 0;
            for d in &dsts {
                hits += usize::from(reader.lookup(black_box(*d)).is_some());
            }
            hits
        })
    });

    let stop = Arc::new(AtomicBool::new(false));
    let publishes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, publishes) = (Arc::clone(&stop), Arc::clone(&publishes));
        thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                w.apply(FibChange {
                    subnet: subnet(i % ROUTES),
                    next_hop: Some(PeerId((i % 7) as u64)),
                });
                w.publish();
                publishes.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    g.bench_function("lookup_while_publishing_10k", |b| {
        b.iter(|| {
            let mut hits = 0;
            for d in &dsts {
                hits += usize::from(reader.lookup(black_box(*d)).is_some());
            }
            hits
        })
    });
    g.bench_function("lookup_snapshot_batch_while_publishing_10k", |b| {
        b.iter(|| {
            let snap = reader.snapshot();
            let mut hits = 0;
            for d in &dsts {
                hits += usize::from(snap.lookup(black_box(*d)).is_some());
            }
            hits
        })
    });
    g.finish();
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");
    eprintln!(
        "fib: writer published {} snapshots during the measurements",
        publishes.load(Ordering::Relaxed)
    );
}

criterion_group!(benches, fib);
criterion_main!(benches);
