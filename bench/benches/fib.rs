//! Forwarding-table lookups per second on one reader thread while another thread keeps
//! publishing new snapshots (10 000 `/64` routes; each publish changes one entry), and what
//! publishing costs the writer with 100 000 routes installed:
//!
//! * `publish_one_change_100k`: one entry changes, then a publish.
//! * `flap_10k_of_100k`: 10 000 entries change next hop, published every 256 changes (as the
//!   control thread batches them): the writer's time per second of a peer flapping 10 000
//!   routes/s. `control`'s `flap_10k_of_100k_routes` adds the router and the route keys.

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
/// Routes installed for the publish benchmarks.
const BIG: usize = 100_000;
/// Routes that flap in `flap_10k_of_100k`.
const FLAP: usize = 10_000;
/// Changes per publish (the control thread's batch).
const PUBLISH_BATCH: usize = 256;

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
            w
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
    let w = writer.join().expect("writer thread");
    eprintln!(
        "fib: writer published {} snapshots during the measurements, {} of them after copying \
         the table (the previous snapshot still held by the reader)",
        publishes.load(Ordering::Relaxed),
        w.full_copies()
    );
}

fn installed(routes: usize) -> FibWriter {
    let mut w = FibWriter::new(0xf1b);
    for i in 0..routes {
        w.apply(FibChange {
            subnet: subnet(i),
            next_hop: Some(PeerId(i as u64 % 8)),
        });
    }
    w.publish();
    w
}

fn publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("fib");
    {
        let w = installed(BIG);
        let reader = w.reader();
        let dsts: Vec<Ipv6Addr> = (0..BATCH).map(|i| dst((i * 7919) % BIG)).collect();
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function("lookup_quiet_100k", |b| {
            b.iter(|| {
                let mut hits = 0;
                for d in &dsts {
                    hits += usize::from(reader.lookup(black_box(*d)).is_some());
                }
                hits
            })
        });
    }
    let mut w = installed(BIG);
    // A reader, as the data plane has. Each iteration's apply replays the previous change on the
    // writer's other table, so the figure is the whole cost of a publication.
    let reader = w.reader();
    let mut n = 0usize;
    g.throughput(Throughput::Elements(1));
    g.bench_function("publish_one_change_100k", |b| {
        b.iter(|| {
            n += 1;
            w.apply(FibChange {
                subnet: subnet((n * 7919) % BIG),
                next_hop: Some(PeerId(8 + (n % 2) as u64)),
            });
            black_box(w.publish())
        })
    });
    let mut flip = 0u64;
    g.throughput(Throughput::Elements(FLAP as u64));
    g.bench_function("flap_10k_of_100k", |b| {
        b.iter(|| {
            flip += 1;
            for start in (0..FLAP).step_by(PUBLISH_BATCH) {
                for i in start..(start + PUBLISH_BATCH).min(FLAP) {
                    w.apply(FibChange {
                        subnet: subnet(i),
                        next_hop: Some(PeerId(16 + flip % 2)),
                    });
                }
                w.publish();
            }
        })
    });
    g.finish();
    assert_eq!(reader.snapshot().len(), BIG);
}

criterion_group!(benches, fib, publish);
criterion_main!(benches);
