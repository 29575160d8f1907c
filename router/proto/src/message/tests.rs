use std::time::{Duration, Instant};

use super::inbound::chunk_fits;
use super::outbound::{KeyTable, layout};
use super::rtt::RttTable;
use hyphae_wire::identity::PublicKey;

#[test]
fn layout_matches_the_reference_and_avoids_short_tails() {
    assert_eq!(layout(0, 1300), vec![]);
    assert_eq!(layout(12, 1300), vec![(0, 12)]);
    assert_eq!(
        layout(3000, 1300),
        vec![(0, 1300), (1300, 1300), (2600, 400)]
    );
    // 1300 + 100 would be refused by a stock receiver: 1150 + 250 instead, same count.
    assert_eq!(layout(1400, 1300), vec![(0, 1150), (1150, 250)]);
    assert_eq!(
        layout(2601, 1300),
        vec![(0, 1300), (1300, 1051), (2351, 250)]
    );
    for len in [1301u64, 1549, 1550, 5000, 65_000] {
        let l = layout(len, 1300);
        assert_eq!(l.len() as u64, len.div_ceil(1300));
        let mut off = 0;
        for (i, (o, n)) in l.iter().enumerate() {
            assert_eq!(*o, off);
            assert!(chunk_fits(len, i as u64, *o, u64::from(*n)));
            // The stock rule: small chunks only at the highest possible index.
            let max = len.div_ceil(250) - 1;
            assert!(*n >= 250 || i as u64 == max);
            off += u64::from(*n);
        }
        assert_eq!(off, len);
    }
}

#[test]
fn rto_follows_samples_and_is_clamped() {
    let now = Instant::now();
    let ms = Duration::from_millis;
    let mut t = RttTable::new(2, ms(100), ms(5), ms(1000));
    let k = |b| PublicKey::from([b; 32]);
    assert_eq!(t.rto(&k(1)), ms(100));
    t.sample(now, k(1), ms(20));
    // srtt 20, rttvar 10 => 60
    assert_eq!(t.rto(&k(1)), ms(60));
    assert_eq!(t.rto_backoff(&k(1), 1), ms(120));
    assert_eq!(t.rto_backoff(&k(1), 10), ms(1000));
    t.sample(now, k(2), Duration::from_micros(100));
    assert_eq!(t.rto(&k(2)), ms(5));
    // Bounded: a third destination evicts the least recently used.
    t.sample(now + ms(1), k(3), ms(1));
    assert!(t.get(&k(1)).is_none() || t.get(&k(2)).is_none());
    assert!(t.get(&k(3)).is_some());
}

#[test]
fn topic_acl_as_the_reference() {
    use super::TopicAcl;
    let (b, c) = (PublicKey::from([1; 32]), PublicKey::from([2; 32]));
    let mut acl = TopicAcl::default();
    assert!(acl.allows(b"any", &c), "default accept");
    acl.add_source(b"rpc", b.subnet());
    assert!(acl.allows(b"rpc", &b));
    assert!(
        !acl.allows(b"rpc", &c),
        "whitelisted topic: only listed sources"
    );
    assert!(acl.allows(b"other", &c));
    acl.remove_source(b"rpc", &b.subnet());
    assert_eq!(acl.sources(b"rpc"), Some(&[][..]));
    assert!(!acl.allows(b"rpc", &b), "an empty whitelist accepts nobody");
    acl.remove_topic(b"rpc");
    acl.set_default_accept(false);
    assert!(!acl.allows(b"rpc", &b));
    acl.add_topic(b"open");
    assert!(!acl.allows(b"open", &b));
}

/// A peer that has filled one pending message must not make the receiver pass over all of it
/// again with every DONE that names another wrong checksum (a 60-byte packet for a pass over
/// up to 64 MiB): the chunks are hashed once while they do not change.
#[test]
fn dones_with_wrong_checksums_hash_the_message_once() {
    use super::{Config, Messages};
    use hyphae_wire::message::{MessageBody, MessageFlags, MessageId, MessagePacket};
    let now = Instant::now();
    let own = PublicKey::from([1; 32]);
    let src = PublicKey::from([2; 32]);
    let mut m = Messages::new(now, Config::default(), own);
    let id = MessageId([7; 8]);
    let data: Vec<u8> = (0..13_000u32).map(|i| (i % 251) as u8).collect();
    let len = data.len() as u64;
    let packet = |flags, body| MessagePacket { id, flags, body };
    m.handle_packet(
        now,
        src,
        packet(
            MessageFlags::INIT,
            MessageBody::Init {
                total_len: len,
                topic: b"",
            },
        ),
    );
    let mut count = 0;
    for (i, chunk) in data.chunks(1300).enumerate() {
        let body = MessageBody::Chunk {
            index: i as u64,
            offset: (i * 1300) as u64,
            data: chunk,
        };
        m.handle_packet(now, src, packet(MessageFlags::CHUNK, body));
        count += 1;
    }
    let done = |m: &mut Messages, checksum: [u8; 32]| {
        let body = MessageBody::Done {
            chunk_count: count,
            checksum,
        };
        m.handle_packet(now, src, packet(MessageFlags::DONE, body));
    };
    for k in 0..=40u8 {
        done(&mut m, [k; 32]);
    }
    assert_eq!(m.stats().bad_done, 41);
    assert_eq!(m.inbound[&(src, id)].hash_passes, 1);
    // The right checksum still completes it.
    done(&mut m, *blake3::hash(&data).as_bytes());
    assert!(!m.inbound.contains_key(&(src, id)));
    let got = std::iter::from_fn(|| m.poll_event()).find_map(|e| match e {
        super::Event::Received(msg) => Some(msg.payload),
        _ => None,
    });
    assert_eq!(got.as_deref(), Some(&data[..]));
}

/// Finished messages name their destination by index: each key is held once, for as long as
/// any record names it, and its slot is reused once none does.
#[test]
fn finished_destinations_are_held_once_and_freed_with_their_last_record() {
    let key = |n: u8| hyphae_wire::identity::SecretKey::from_bytes([n; 32]).public_key();
    let mut t = KeyTable::default();
    let a = t.hold(key(1));
    let b = t.hold(key(2));
    assert_ne!(a, b);
    assert_eq!(t.hold(key(1)), a, "one slot per key");
    assert_eq!(t.len(), 2);
    assert_eq!((t.key(a), t.key(b)), (key(1), key(2)));
    t.release(a);
    assert_eq!(t.key(a), key(1), "still named by one record");
    t.release(a);
    assert_eq!(t.len(), 1, "freed with its last record");
    let c = t.hold(key(3));
    assert_eq!(c, a, "the free slot is reused");
    assert_eq!(t.key(c), key(3));
    t.release(b);
    t.release(c);
    assert_eq!(t.len(), 0);
}
