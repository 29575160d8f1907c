//! Wire compatibility with stock mycelium 0.7.10: the message packets captured between three
//! reference nodes (`wire/tests/vectors/mycelium-0.7.10/frames.json`, decrypted plaintexts)
//! go through our receiver, whose ACKs and READs must be byte-identical to the reference's;
//! and our sender, given the same id, topic and payload, must emit the captured INIT, CHUNK
//! and DONE bytes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyphae_proto::message::{Config, Event, Messages, State};
use hyphae_wire::identity::PublicKey;
use hyphae_wire::message::{MessageBody, MessageId, MessagePacket};
use serde_json::Value;

const FRAMES: &str = include_str!("../../../wire/tests/vectors/mycelium-0.7.10/frames.json");
const KEYS: &str = include_str!("../../../wire/tests/vectors/mycelium-0.7.10/keys.json");

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn key(node: &str) -> PublicKey {
    let keys: Value = serde_json::from_str(KEYS).unwrap();
    PublicKey::from_hex(keys[node]["public_key"].as_str().unwrap()).unwrap()
}

/// A captured message packet (without the 4-byte user-data header).
#[derive(Debug, Clone)]
struct Captured {
    src_addr: String,
    id: String,
    flags: String,
    packet: Vec<u8>,
}

fn captured() -> Vec<Captured> {
    let frames: Value = serde_json::from_str(FRAMES).unwrap();
    frames
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f.get("message").is_some())
        .map(|f| {
            let plain = unhex(f["plaintext"].as_str().unwrap());
            assert_eq!(&plain[..4], &[1, 1, 0, 0], "user data header, kind 1");
            Captured {
                src_addr: f["src"].as_str().unwrap().to_owned(),
                id: f["message"]["id"].as_str().unwrap().to_owned(),
                flags: f["message"]["flags"].as_str().unwrap().to_owned(),
                packet: plain[4..].to_vec(),
            }
        })
        .collect()
}

fn find<'a>(all: &'a [Captured], id: &str, flags: &str) -> Vec<&'a Captured> {
    all.iter()
        .filter(|c| c.id == id && c.flags == flags)
        .collect()
}

fn id_of(hex: &str) -> MessageId {
    MessageId(unhex(hex).try_into().unwrap())
}

/// The payload, reassembled from the captured CHUNK packets.
fn payload(all: &[Captured], id: &str) -> (Vec<u8>, Vec<u8>) {
    let mut data = Vec::new();
    for c in find(all, id, "CHUNK") {
        let MessageBody::Chunk {
            offset, data: d, ..
        } = MessagePacket::decode(&c.packet).unwrap().body
        else {
            panic!()
        };
        assert_eq!(offset as usize, data.len());
        data.extend_from_slice(d);
    }
    let init = &find(all, id, "INIT")[0].packet;
    let MessageBody::Init { topic, .. } = MessagePacket::decode(init).unwrap().body else {
        panic!()
    };
    (data, topic.to_vec())
}

fn drain(m: &mut Messages, now: Instant) -> Vec<(PublicKey, Vec<u8>)> {
    std::iter::from_fn(|| m.poll_transmit(now))
        .map(|t| (t.dst, t.payload))
        .collect()
}

const SMALL: &str = "54d79a07138638ca";
const LARGE: &str = "59ef4d9a005cbbee";
const MULTI: &str = "aa3774665a04104a";

#[test]
fn receiver_acks_match_the_reference() {
    let all = captured();
    let t0 = Instant::now();
    let (a, b, c) = (key("a"), key("b"), key("c"));
    for (id, receiver, sender) in [(SMALL, b, a), (LARGE, b, a), (MULTI, a, c)] {
        let mut m = Messages::new(t0, Config::default(), receiver);
        let sender_addr = sender.address().to_string();
        let mut acks = Vec::new();
        for p in all
            .iter()
            .filter(|p| p.id == id && !p.flags.contains("ACK"))
        {
            if p.flags == "READ" {
                continue;
            }
            assert_eq!(p.src_addr, sender_addr);
            m.handle_datagram(t0, sender, &p.packet).unwrap();
            for (dst, bytes) in drain(&mut m, t0) {
                assert_eq!(dst, sender);
                acks.push(bytes);
            }
        }
        let expected: Vec<Vec<u8>> = all
            .iter()
            .filter(|p| p.id == id && p.flags.ends_with("ACK"))
            .map(|p| p.packet.clone())
            .collect();
        assert_eq!(acks, expected, "ACKs of {id}");

        let (data, topic) = payload(&all, id);
        let Some(Event::Received(msg)) = m.poll_event() else {
            panic!("{id} not delivered")
        };
        assert_eq!(msg.id, id_of(id));
        assert_eq!(msg.src, sender);
        assert!(!msg.reply);
        assert_eq!(&msg.payload[..], &data[..]);
        assert_eq!(&msg.topic[..], &topic[..]);
        assert!(m.poll_event().is_none(), "delivered once");

        m.mark_read(t0, sender, msg.id);
        let read = drain(&mut m, t0);
        assert_eq!(
            read,
            vec![(sender, find(&all, id, "READ")[0].packet.clone())]
        );
    }
}

#[test]
fn vector_sizes() {
    let all = captured();
    assert_eq!(payload(&all, SMALL).0.len(), 12);
    assert_eq!(payload(&all, SMALL).1, b"vector.topic");
    assert_eq!(payload(&all, LARGE).0.len(), 3000);
    assert_eq!(find(&all, LARGE, "CHUNK").len(), 3);
    assert_eq!(payload(&all, MULTI).1, b"multi.hop");
}

fn sender_emits_reference_packets(pipelining: bool) {
    let all = captured();
    let t0 = Instant::now();
    let (a, b, c) = (key("a"), key("b"), key("c"));
    for (id, sender, receiver) in [(SMALL, a, b), (LARGE, a, b), (MULTI, c, a)] {
        let mut cfg = Config::default();
        cfg.pipelining = pipelining;
        let mut m = Messages::new(t0, cfg, sender);
        let (data, topic) = payload(&all, id);
        m.push(t0, id_of(id), receiver, &topic, Bytes::from(data.clone()))
            .unwrap();
        assert_eq!(m.status(id_of(id)).unwrap().state, State::Pending);
        let ours = |m: &mut Messages, now| -> Vec<Vec<u8>> {
            drain(m, now)
                .into_iter()
                .map(|(dst, bytes)| {
                    assert_eq!(dst, receiver);
                    bytes
                })
                .collect()
        };
        let init = find(&all, id, "INIT")[0].packet.clone();
        let chunks: Vec<Vec<u8>> = find(&all, id, "CHUNK")
            .into_iter()
            .map(|c| c.packet.clone())
            .collect();
        let done = find(&all, id, "DONE")[0].packet.clone();
        let first = ours(&mut m, t0);
        let t1 = t0 + Duration::from_millis(1);
        if pipelining {
            // INIT, every chunk and the DONE at once, before the INIT-ACK.
            let mut expected = vec![init.clone()];
            expected.extend(chunks.iter().cloned());
            expected.push(done.clone());
            assert_eq!(first, expected);
            m.handle_datagram(t1, receiver, &find(&all, id, "INIT|ACK")[0].packet)
                .unwrap();
            assert!(ours(&mut m, t1).is_empty());
        } else {
            assert_eq!(first, vec![init.clone()]);
            m.handle_datagram(t1, receiver, &find(&all, id, "INIT|ACK")[0].packet)
                .unwrap();
            assert_eq!(ours(&mut m, t1), chunks);
        }
        for ack in find(&all, id, "CHUNK|ACK") {
            m.handle_datagram(t1, receiver, &ack.packet).unwrap();
        }
        // The chunk ACKs bring the DONE (not again, if it went early).
        let expected = match pipelining {
            true => vec![],
            false => vec![done.clone()],
        };
        assert_eq!(ours(&mut m, t1), expected);
        m.handle_datagram(t1, receiver, &find(&all, id, "DONE|ACK")[0].packet)
            .unwrap();
        assert_eq!(m.status(id_of(id)).unwrap().state, State::Received);
        m.handle_datagram(t1, receiver, &find(&all, id, "READ")[0].packet)
            .unwrap();
        assert_eq!(m.status(id_of(id)).unwrap().state, State::Read);
        let events: Vec<Event> = std::iter::from_fn(|| m.poll_event()).collect();
        let states: Vec<State> = events
            .iter()
            .map(|e| match e {
                Event::StateChanged { state, .. } => *state,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(states, vec![State::Received, State::Read]);
        // READ is not acknowledged (the capture has no READ|ACK).
        assert!(ours(&mut m, t1).is_empty());
    }
}

#[test]
fn sender_matches_reference_init_first() {
    sender_emits_reference_packets(false);
}

#[test]
fn sender_matches_reference_pipelined() {
    sender_emits_reference_packets(true);
}
