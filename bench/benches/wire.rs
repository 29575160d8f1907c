//! Criterion benchmarks for the wire codecs: deframing a mixed stream, the data-frame view with
//! hop-limit rewrite, sealing and opening, and hyphae's framing.
//!
//! Run: `cargo bench -p hyphae-bench --bench wire`. Figures are printed as throughput
//! (frames/s, bytes/s). Nothing here is a pass/fail gate.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hyphae_wire::babel::{Hello, Ihu, Tlv, Update};
use hyphae_wire::data::{DataFrame, DataHeader};
use hyphae_wire::deframer::{Deframer, Frame};
use hyphae_wire::framing::{
    self, Destination, Envelope, Header, Message, Push, RelayItem, RelayRequest,
};
use hyphae_wire::identity::SecretKey;
use hyphae_wire::seal::{SEAL_OVERHEAD, SealingKey, UserDataKind};
use hyphae_wire::{Interval, Metric, RouterId, SeqNo};

/// A stream of 1000 frames in the mix a busy link sees: mostly data frames of 296 and 1340
/// bytes, with Hellos, IHUs and Updates in between.
fn mixed_stream() -> (Vec<u8>, u64) {
    let node = SecretKey::from_bytes([5; 32]).public_key();
    let header = DataHeader {
        hop_limit: 64,
        src: node.address(),
        dst: node.address(),
    };
    let small = vec![0xa5u8; 296 - 40];
    let large = vec![0x5au8; 1340 - 40];
    let update = Tlv::Update(Update {
        flags: 0,
        interval: Interval::from_secs(300),
        seqno: SeqNo(3),
        metric: Metric(1012),
        subnet: node.subnet(),
        router_id: RouterId::new(&node, 0, [1, 2, 3, 4, 5, 6]),
    });
    let hello = Tlv::Hello(Hello::unicast(SeqNo(1), Interval::from_secs(20)));
    let ihu = Tlv::Ihu(Ihu {
        rx_cost: Metric(17),
        interval: Interval::from_secs(60),
        address: None,
    });
    let mut v = Vec::new();
    for i in 0..1000u32 {
        match i % 10 {
            0 => update.encode_frame(&mut v),
            1 => hello.encode_frame(&mut v),
            2 => ihu.encode_frame(&mut v),
            3..=6 => header.emit_frame(&small, &mut v).expect("fits"),
            _ => header.emit_frame(&large, &mut v).expect("fits"),
        }
    }
    (v, 1000)
}

fn deframe(c: &mut Criterion) {
    let (stream, frames) = mixed_stream();
    let mut g = c.benchmark_group("deframe");
    g.throughput(Throughput::Elements(frames));
    g.bench_function("mixed_1000_frames", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&stream[..]),
            |buf| {
                let mut d = Deframer::new();
                let mut n = 0u32;
                while let Some(f) = d.next_frame(buf).expect("valid stream") {
                    n += u32::from(matches!(f, Frame::Data(_)));
                }
                black_box(n)
            },
            criterion::BatchSize::LargeInput,
        );
    });
    g.finish();
}

fn forward_view(c: &mut Criterion) {
    let (stream, _) = mixed_stream();
    // Only the data frames, each in its own buffer as a receive path would split them.
    let mut buf = BytesMut::from(&stream[..]);
    let mut d = Deframer::new();
    let mut frames = Vec::new();
    while let Some(f) = d.next_frame(&mut buf).expect("valid") {
        if let Frame::Data(df) = f {
            frames.push(df.into_inner());
        }
    }
    let mut g = c.benchmark_group("data_view");
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function("check_and_decrement_hop_limit", |b| {
        b.iter(|| {
            for f in frames.iter_mut() {
                let mut view = DataFrame::new_checked(&mut f[..]).expect("valid");
                let h = view.hop_limit();
                view.set_hop_limit(if h > 1 { h - 1 } else { 64 });
                black_box(view.dst());
            }
        });
    });
    g.finish();
}

fn seal_open(c: &mut Criterion) {
    let a = SecretKey::from_bytes([1; 32]);
    let b = SecretKey::from_bytes([2; 32]);
    let key = SealingKey::new(&a.shared_secret(&b.public_key()));
    let mut g = c.benchmark_group("seal");
    for size in [256usize, 1400] {
        let payload = vec![7u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        let mut out = Vec::with_capacity(size + SEAL_OVERHEAD);
        g.bench_function(format!("seal_{size}"), |bch| {
            bch.iter(|| {
                out.clear();
                key.seal(
                    [3; 12],
                    UserDataKind::MESSAGE,
                    black_box(&payload),
                    &mut out,
                );
                black_box(out.len())
            });
        });
        let mut sealed = Vec::new();
        key.seal([3; 12], UserDataKind::MESSAGE, &payload, &mut sealed);
        let mut work = sealed.clone();
        g.bench_function(format!("open_{size}"), |bch| {
            bch.iter(|| {
                work.copy_from_slice(&sealed);
                let (_, p) = key.open(&mut work).expect("opens");
                black_box(p.len())
            });
        });
    }
    g.finish();
}

fn framing_codec(c: &mut Criterion) {
    let payload = vec![0x42u8; 1024];
    let push = Message::Push(Push {
        tag: 9,
        dst: Destination::PublicKey([8; 32]),
        topic: b"hyphae.federation",
        payload: &payload,
        reply_to: None,
        reply_timeout_ms: Some(30_000),
    });
    let auth =
        b"X-Matrix origin=\"a.example\",destination=\"b.example\",key=\"ed25519:1\",sig=\"abc\"";
    let items = (0..8)
        .map(|i| {
            RelayItem::Request(RelayRequest {
                id: i,
                method: "PUT",
                target: b"/_matrix/federation/v1/send/1700000000000",
                headers: vec![
                    Header {
                        name: "authorization",
                        value: auth,
                    },
                    Header {
                        name: "content-type",
                        value: b"application/json",
                    },
                ],
                body: &payload,
                more: false,
            })
        })
        .collect();
    let envelope = Message::Envelope(Envelope { items });
    let mut g = c.benchmark_group("framing");
    for (name, msg) in [("push_1k", &push), ("envelope_8x1k", &envelope)] {
        let mut encoded = BytesMut::new();
        msg.encode(framing::DEFAULT_MAX_BODY, &mut encoded)
            .expect("encodes");
        g.throughput(Throughput::Bytes(encoded.len() as u64));
        let mut out = BytesMut::with_capacity(encoded.len());
        g.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| {
                out.clear();
                msg.encode(framing::DEFAULT_MAX_BODY, &mut out)
                    .expect("encodes");
                black_box(out.len())
            });
        });
        let frozen = encoded.freeze();
        g.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&frozen[..]);
                let (kind, body) = framing::split_frame(&mut buf, framing::DEFAULT_MAX_BODY)
                    .expect("valid")
                    .expect("whole");
                black_box(Message::decode(kind, &body).expect("decodes"));
            });
        });
    }
    g.finish();
}

criterion_group!(benches, deframe, forward_view, seal_open, framing_codec);
criterion_main!(benches);
