//! Golden vectors captured from stock mycelium 0.7.10 (see `vectors/mycelium-0.7.10/README.md`):
//! every frame decodes to the recorded fields and re-encodes to exactly the recorded bytes, the
//! streams deframe completely however they are cut, every data frame opens with the recorded
//! keys to the recorded plaintext (also in place, through `DataFrame::open`) and is rebuilt
//! byte for byte by `DataHeader::emit_sealed`, and the identities derive from the secrets.

use std::net::{IpAddr, Ipv6Addr};

use bytes::BytesMut;
use hyphae_wire::babel::{Ae, Tlv};
use hyphae_wire::data::{DataFrame, DataHeader};
use hyphae_wire::deframer::{Deframer, Frame, decode_datagram};
use hyphae_wire::identity::{PublicKey, SecretKey};
use hyphae_wire::message::{MessageFlags, MessagePacket};
use hyphae_wire::seal::{SealingKey, UserDataKind};
use hyphae_wire::{RouterId, Subnet};
use serde_json::Value;

const FRAMES: &str = include_str!("vectors/mycelium-0.7.10/frames.json");
const KEYS: &str = include_str!("vectors/mycelium-0.7.10/keys.json");

struct Node {
    secret: SecretKey,
    public: PublicKey,
    address: Ipv6Addr,
}

fn nodes() -> Vec<Node> {
    let keys: Value = serde_json::from_str(KEYS).unwrap();
    ["a", "b", "c"]
        .iter()
        .map(|n| {
            let k = &keys[n];
            let secret: [u8; 32] = unhex(&k["secret_key"]).try_into().unwrap();
            Node {
                secret: SecretKey::from_bytes(secret),
                public: PublicKey::from_hex(k["public_key"].as_str().unwrap()).unwrap(),
                address: k["address"].as_str().unwrap().parse().unwrap(),
            }
        })
        .collect()
}

fn frames() -> Vec<Value> {
    serde_json::from_str::<Value>(FRAMES)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn int(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

fn decode_one(bytes: &[u8]) -> Frame<BytesMut> {
    let mut buf = BytesMut::from(bytes);
    let f = Deframer::new()
        .next_frame(&mut buf)
        .unwrap()
        .expect("a whole frame");
    assert!(buf.is_empty(), "frame consumed exactly");
    f
}

fn encode_tlv(t: &Tlv) -> Vec<u8> {
    let mut v = Vec::new();
    t.encode_frame(&mut v);
    assert_eq!(v.len(), t.frame_len());
    v
}

#[test]
fn identities_derive_from_secrets() {
    let keys: Value = serde_json::from_str(KEYS).unwrap();
    for (node, name) in nodes().iter().zip(["a", "b", "c"]) {
        assert_eq!(node.secret.public_key(), node.public, "{name} public key");
        assert_eq!(node.public.address(), node.address, "{name} address");
        let subnet: Subnet = keys[name]["subnet"].as_str().unwrap().parse().unwrap();
        assert_eq!(node.public.subnet(), subnet, "{name} subnet");
        assert_eq!(
            node.secret.to_bytes().to_vec(),
            unhex(&keys[name]["secret_key"])
        );
    }
}

#[test]
fn every_frame_decodes_to_recorded_fields_and_reencodes_exactly() {
    let mut kinds = std::collections::BTreeSet::new();
    for (i, f) in frames().iter().enumerate() {
        let bytes = unhex(&f["hex"]);
        let kind = f["kind"].as_str().unwrap();
        kinds.insert(kind.to_owned());
        let decoded = decode_one(&bytes);
        let reencoded = match (kind, decoded) {
            ("data", Frame::Data(d)) => {
                assert_eq!(u64::from(d.body_len()), int(&f["len"]), "frame {i} len");
                assert_eq!(u64::from(d.hop_limit()), int(&f["hop_limit"]), "frame {i}");
                assert_eq!(d.src().to_string(), f["src"].as_str().unwrap());
                assert_eq!(d.dst().to_string(), f["dst"].as_str().unwrap());
                assert_eq!(&d.body()[d.body().len() - 12..], unhex(&f["nonce"]));
                let mut v = Vec::new();
                DataHeader::parse(&d).emit_frame(d.body(), &mut v).unwrap();
                v
            }
            ("update", Frame::Control(t @ Tlv::Update(u))) => {
                assert_eq!(u64::from(Ae::for_subnet(&u.subnet).0), int(&f["ae"]));
                assert_eq!(u64::from(u.flags), int(&f["flags"]));
                assert_eq!(u64::from(u.subnet.prefix_len()), int(&f["plen"]));
                assert_eq!(int(&f["omitted"]), 0);
                assert_eq!(u64::from(u.interval.0), int(&f["interval_cs"]));
                assert_eq!(u64::from(u.seqno.0), int(&f["seqno"]));
                assert_eq!(u64::from(u.metric.0), int(&f["metric"]));
                assert_eq!(u.subnet.to_string(), f["prefix"].as_str().unwrap());
                let rid = RouterId(unhex(&f["router_id"]).try_into().unwrap());
                assert_eq!(u.router_id, rid);
                // The router id owns the subnet, as the reference's filter requires.
                assert!(u.subnet.contains_ip(IpAddr::V6(rid.public_key().address())));
                encode_tlv(&t)
            }
            ("hello", Frame::Control(t @ Tlv::Hello(h))) => {
                assert_eq!(u64::from(h.flags), int(&f["flags"]));
                assert_eq!(u64::from(h.seqno.0), int(&f["seqno"]));
                assert_eq!(u64::from(h.interval.0), int(&f["interval_cs"]));
                encode_tlv(&t)
            }
            ("ihu", Frame::Control(t @ Tlv::Ihu(h))) => {
                assert_eq!(int(&f["ae"]), 0);
                assert_eq!(h.address, None);
                assert_eq!(f["address"].as_str().unwrap(), "");
                assert_eq!(u64::from(h.rx_cost.0), int(&f["rx_cost"]));
                assert_eq!(u64::from(h.interval.0), int(&f["interval_cs"]));
                encode_tlv(&t)
            }
            ("route_request", Frame::Control(t @ Tlv::RouteRequest(r))) => {
                assert_eq!(u64::from(r.generation), int(&f["generation"]));
                let p = r.prefix.unwrap();
                assert_eq!(u64::from(Ae::for_subnet(&p).0), int(&f["ae"]));
                assert_eq!(u64::from(p.prefix_len()), int(&f["plen"]));
                assert_eq!(p.to_string(), f["prefix"].as_str().unwrap());
                encode_tlv(&t)
            }
            (k, other) => panic!("frame {i}: recorded as {k}, decoded as {other:?}"),
        };
        assert_eq!(
            hex::encode(reencoded),
            hex::encode(&bytes),
            "frame {i} ({kind}) re-encodes"
        );
    }
    // The capture covers every kind it claims to.
    let want = ["data", "hello", "ihu", "route_request", "update"];
    assert_eq!(kinds.iter().map(String::as_str).collect::<Vec<_>>(), want);
}

fn stream(direction: &str) -> (Vec<u8>, usize) {
    let fs: Vec<_> = frames()
        .into_iter()
        .filter(|f| f["direction"] == direction)
        .collect();
    (fs.iter().flat_map(|f| unhex(&f["hex"])).collect(), fs.len())
}

/// Feeds `bytes` in pieces of the sizes `cut` yields and returns the frames.
fn deframe_in_pieces(bytes: &[u8], mut cut: impl FnMut() -> usize) -> Vec<Frame<BytesMut>> {
    let mut d = Deframer::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let n = cut().clamp(1, bytes.len() - pos);
        buf.extend_from_slice(&bytes[pos..pos + n]);
        pos += n;
        while let Some(f) = d.next_frame(&mut buf).unwrap() {
            out.push(f);
        }
    }
    assert!(buf.is_empty(), "nothing left over");
    assert_eq!(d.stats().skipped, 0);
    out
}

#[test]
fn both_streams_deframe_completely_however_cut() {
    for dir in ["a_to_b", "b_to_a"] {
        let (bytes, count) = stream(dir);
        let whole = deframe_in_pieces(&bytes, || usize::MAX);
        assert_eq!(whole.len(), count, "{dir}");
        assert_eq!(deframe_in_pieces(&bytes, || 1), whole, "{dir} byte by byte");
        let mut x = 0x2545_f491_u32;
        let random = deframe_in_pieces(&bytes, || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % 200) as usize
        });
        assert_eq!(random, whole, "{dir} random cuts");
    }
}

#[test]
fn every_data_frame_opens_to_recorded_plaintext_and_reseals_identically() {
    let nodes = nodes();
    let by_addr = |a: Ipv6Addr| nodes.iter().find(|n| n.address == a).expect("known node");
    let mut messages = 0;
    for (i, f) in frames()
        .iter()
        .enumerate()
        .filter(|(_, f)| f["kind"] == "data")
    {
        let bytes = unhex(&f["hex"]);
        let mut frame = DataFrame::new_checked(bytes.clone()).unwrap();
        let (src, dst) = (by_addr(frame.src()), by_addr(frame.dst()));
        let key = SealingKey::new(&src.secret.shared_secret(&dst.public));
        // The receiver derives the same key from its side.
        let rx_key = SealingKey::new(&dst.secret.shared_secret(&src.public));
        let plaintext = unhex(&f["plaintext"]);
        let (kind, payload) = rx_key.open(frame.body_mut()).unwrap();
        assert_eq!(kind, UserDataKind::MESSAGE, "frame {i}");
        assert_eq!(&plaintext[..4], &[1, 1, 0, 0]);
        assert_eq!(payload, &plaintext[4..], "frame {i} plaintext");

        // Sealing the plaintext with the recorded nonce gives the captured body.
        let nonce: [u8; 12] = unhex(&f["nonce"]).try_into().unwrap();
        let mut resealed = Vec::new();
        key.seal(nonce, UserDataKind::MESSAGE, &plaintext[4..], &mut resealed);
        assert_eq!(resealed, bytes[40..], "frame {i} reseals");

        // The message packet inside decodes as recorded and re-encodes exactly.
        let p = MessagePacket::decode(&plaintext[4..]).unwrap();
        assert_eq!(p.id.to_string(), f["message"]["id"].as_str().unwrap());
        assert_eq!(
            format!("{:?}", p.flags),
            f["message"]["flags"].as_str().unwrap()
        );
        let mut v = Vec::new();
        p.encode(&mut v);
        assert_eq!(v.len(), p.encoded_len());
        assert_eq!(v, &plaintext[4..], "frame {i} message re-encodes");
        if p.flags.contains(MessageFlags::ACK) {
            continue;
        }
        messages += 1;
    }
    assert!(messages >= 10);
}

#[test]
fn every_data_frame_opens_in_place_and_emit_sealed_rebuilds_it() {
    let nodes = nodes();
    let by_addr = |a: Ipv6Addr| nodes.iter().find(|n| n.address == a).expect("known node");
    let mut opened = 0;
    for (i, f) in frames()
        .iter()
        .enumerate()
        .filter(|(_, f)| f["kind"] == "data")
    {
        let bytes = unhex(&f["hex"]);
        let plaintext = unhex(&f["plaintext"]);
        let payload = &plaintext[4..];

        // Open in place; the range points at exactly the recorded payload.
        let mut frame = DataFrame::new_checked(BytesMut::from(&bytes[..])).unwrap();
        let header = DataHeader::parse(&frame);
        let (src, dst) = (by_addr(header.src), by_addr(header.dst));
        let rx_key = SealingKey::new(&dst.secret.shared_secret(&src.public));
        let (kind, range) = frame.open(&rx_key).unwrap();
        assert_eq!(kind, UserDataKind::MESSAGE, "frame {i}");
        assert_eq!(range.len(), payload.len(), "frame {i}");
        assert_eq!(
            range.end,
            bytes.len() - 28,
            "frame {i}: tag and nonce follow"
        );
        assert_eq!(&frame.as_bytes()[range.clone()], payload, "frame {i}");
        let owned = frame.into_inner().freeze().slice(range);
        assert_eq!(&owned[..], payload, "frame {i}");

        // The sender's side: header, payload and recorded nonce give the captured bytes, in one
        // piece or in two.
        let tx_key = SealingKey::new(&src.secret.shared_secret(&dst.public));
        let nonce: [u8; 12] = unhex(&f["nonce"]).try_into().unwrap();
        let (a, b) = payload.split_at(payload.len() / 2);
        for parts in [&[payload][..], &[a, b][..]] {
            let mut out = BytesMut::new();
            header
                .emit_sealed(&tx_key, nonce, UserDataKind::MESSAGE, parts, &mut out)
                .unwrap();
            assert_eq!(hex::encode(&out), hex::encode(&bytes), "frame {i} rebuilds");
        }
        opened += 1;
    }
    assert!(opened >= 20, "{opened}");
}

#[test]
fn acks_in_capture_are_what_our_ack_builder_makes() {
    // Pair every un-acked packet with the ACK that came back for it.
    let plain: Vec<Vec<u8>> = frames()
        .iter()
        .filter(|f| f["kind"] == "data")
        .map(|f| unhex(&f["plaintext"])[4..].to_vec())
        .collect();
    let packets: Vec<_> = plain
        .iter()
        .map(|p| MessagePacket::decode(p).unwrap())
        .collect();
    let mut matched = 0;
    for p in packets
        .iter()
        .filter(|p| !p.flags.contains(MessageFlags::ACK))
    {
        if p.flags == MessageFlags::READ {
            continue;
        }
        let ack = p.ack();
        assert!(packets.contains(&ack), "no recorded ack for {p:?}");
        matched += 1;
    }
    assert!(matched >= 10, "{matched}");
}

#[test]
fn strict_prefixes_need_more_and_datagram_prefixes_are_clean_errors() {
    for f in frames() {
        let bytes = unhex(&f["hex"]);
        for n in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..n]);
            assert_eq!(Deframer::new().next_frame(&mut buf), Ok(None), "prefix {n}");
            assert_eq!(buf.len(), n, "nothing consumed");
            assert!(decode_datagram(&bytes[..n]).is_err());
        }
        // A datagram carries exactly one frame.
        assert!(decode_datagram(&bytes[..]).is_ok());
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode_datagram(&long[..]).is_err());
    }
}
