//! Property tests: for every type, decode(encode(v)) == v, the encoding has the length the
//! type claims, and arbitrary bytes never panic a decoder. Sealed frames built in place open in
//! place to what went in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::BytesMut;
use hyphae_wire::babel::{
    Hello, Ihu, RouteRequest, SeqnoRequest, Tlv, Update, decode_babel_packet,
};
use hyphae_wire::data::{DataFrame, DataHeader};
use hyphae_wire::deframer::{Deframer, Frame, decode_datagram};
use hyphae_wire::framing::{
    self, BodyPart, Deliver, Destination, Envelope, ErrorCode, ErrorMsg, Header, Kind, Message,
    MessageState, Push, Pushed, RelayItem, RelayRequest, RelayResponse, Reply, Status, StatusQuery,
    Subscribe,
};
use hyphae_wire::icmp::{
    Icmpv6Code, Icmpv6Packet, Icmpv6Type, MAX_OOB_LEN, OobIcmp, PACKET_HEADER_LEN,
};
use hyphae_wire::message::{MessageBody, MessageFlags, MessageId, MessagePacket};
use hyphae_wire::seal::{SealingKey, UserDataKind};
use hyphae_wire::{Interval, Metric, RouterId, SeqNo, Subnet, identity::SecretKey};
use proptest::prelude::*;

fn subnet() -> impl Strategy<Value = Subnet> {
    prop_oneof![
        4 => (any::<u128>(), 0u8..=128).prop_map(|(a, p)| Subnet::new(IpAddr::V6(Ipv6Addr::from(a)), p).unwrap()),
        1 => (any::<u32>(), 0u8..=32).prop_map(|(a, p)| Subnet::new(IpAddr::V4(Ipv4Addr::from(a)), p).unwrap()),
    ]
}

fn v6_subnet() -> impl Strategy<Value = Subnet> {
    (any::<u128>(), 0u8..=128)
        .prop_map(|(a, p)| Subnet::new(IpAddr::V6(Ipv6Addr::from(a)), p).unwrap())
}

fn router_id() -> impl Strategy<Value = RouterId> {
    prop::array::uniform32(any::<u8>()).prop_flat_map(|a| {
        prop::array::uniform8(any::<u8>()).prop_map(move |b| {
            let mut r = [0u8; 40];
            r[..32].copy_from_slice(&a);
            r[32..].copy_from_slice(&b);
            RouterId(r)
        })
    })
}

fn ip() -> impl Strategy<Value = Option<IpAddr>> {
    prop_oneof![
        Just(None),
        any::<u32>().prop_map(|a| Some(IpAddr::V4(a.into()))),
        any::<u128>().prop_map(|a| Some(IpAddr::V6(a.into()))),
        any::<u64>().prop_map(|a| Some(IpAddr::V6(((0xfe80u128 << 112) | u128::from(a)).into()))),
    ]
}

fn tlv() -> impl Strategy<Value = Tlv> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), any::<u16>()).prop_map(|(f, s, i)| Tlv::Hello(Hello {
            flags: f,
            seqno: SeqNo(s),
            interval: Interval(i)
        })),
        (any::<u16>(), any::<u16>(), ip()).prop_map(|(c, i, a)| Tlv::Ihu(Ihu {
            rx_cost: Metric(c),
            interval: Interval(i),
            address: a
        })),
        (
            any::<u8>(),
            any::<u16>(),
            any::<u16>(),
            any::<u16>(),
            subnet(),
            router_id()
        )
            .prop_map(|(flags, i, s, m, subnet, router_id)| Tlv::Update(Update {
                flags,
                interval: Interval(i),
                seqno: SeqNo(s),
                metric: Metric(m),
                subnet,
                router_id
            })),
        (any::<u8>(), prop::option::of(subnet())).prop_map(|(generation, prefix)| {
            Tlv::RouteRequest(RouteRequest { generation, prefix })
        }),
        (any::<u16>(), 1u8.., router_id(), subnet()).prop_map(|(s, h, router_id, prefix)| {
            Tlv::SeqnoRequest(SeqnoRequest {
                seqno: SeqNo(s),
                hop_count: h,
                router_id,
                prefix,
            })
        }),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

proptest! {
    #[test]
    fn tlv_round_trips(t in tlv()) {
        let mut v = Vec::new();
        t.encode_frame(&mut v);
        prop_assert_eq!(v.len(), t.frame_len());
        let mut buf = BytesMut::from(&v[..]);
        let got = Deframer::new().next_frame(&mut buf).unwrap();
        prop_assert_eq!(got, Some(Frame::Control(t)));
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decode_datagram(&v[..]).unwrap(), Frame::Control(t));
    }

    #[test]
    fn data_frame_round_trips(hop in any::<u8>(), src in any::<u128>(), dst in any::<u128>(), body in bytes(2000)) {
        let h = DataHeader { hop_limit: hop, src: src.into(), dst: dst.into() };
        let mut v = Vec::new();
        h.emit_frame(&body, &mut v).unwrap();
        let f = DataFrame::new_checked(&v[..]).unwrap();
        prop_assert_eq!(DataHeader::parse(&f), h);
        prop_assert_eq!(f.body(), &body[..]);
    }

    #[test]
    fn seal_round_trips(secret in prop::array::uniform32(any::<u8>()), nonce in prop::array::uniform12(any::<u8>()),
                        kind in any::<u8>(), payload in bytes(1500)) {
        let a = SecretKey::from_bytes(secret);
        let b = SecretKey::from_bytes([0x42; 32]);
        let k = SealingKey::new(&a.shared_secret(&b.public_key()));
        let mut v = Vec::new();
        k.seal(nonce, UserDataKind(kind), &payload, &mut v);
        let k2 = SealingKey::new(&b.shared_secret(&a.public_key()));
        let (got_kind, got) = k2.open(&mut v).unwrap();
        prop_assert_eq!(got_kind, UserDataKind(kind));
        prop_assert_eq!(got, &payload[..]);
    }

    #[test]
    fn emit_sealed_round_trips(secret in prop::array::uniform32(any::<u8>()),
                               nonce in prop::array::uniform12(any::<u8>()),
                               kind in any::<u8>(), hop in any::<u8>(),
                               src in any::<u128>(), dst in any::<u128>(),
                               parts in prop::collection::vec(bytes(600), 0..4)) {
        let peer = SecretKey::from_bytes([0x42; 32]).public_key();
        let k = SealingKey::new(&SecretKey::from_bytes(secret).shared_secret(&peer));
        let h = DataHeader { hop_limit: hop, src: src.into(), dst: dst.into() };
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let whole = parts.concat();
        let mut v = BytesMut::new();
        h.emit_sealed(&k, nonce, UserDataKind(kind), &parts, &mut v).unwrap();
        // The same bytes as sealing the concatenation, then framing it.
        let mut body = Vec::new();
        k.seal(nonce, UserDataKind(kind), &whole, &mut body);
        let mut two_step = Vec::new();
        h.emit_frame(&body, &mut two_step).unwrap();
        prop_assert_eq!(&v[..], &two_step[..]);
        let mut f = DataFrame::new_checked(v).unwrap();
        prop_assert_eq!(DataHeader::parse(&f), h);
        let (got_kind, range) = f.open(&k).unwrap();
        prop_assert_eq!(got_kind, UserDataKind(kind));
        prop_assert_eq!(&f.as_bytes()[range], &whole[..]);
    }

    #[test]
    fn icmpv6_packet_round_trips(src in any::<u128>(), dst in any::<u128>(), hop in any::<u8>(),
                                 ty in any::<u8>(), code in any::<u8>(), rest in any::<[u8; 4]>(),
                                 body in bytes(1500), orig_dst in any::<u128>(), flip in any::<usize>()) {
        let p = Icmpv6Packet {
            src: src.into(), dst: dst.into(), hop_limit: hop,
            ty: Icmpv6Type(ty), code: Icmpv6Code(code), rest, body: &body,
        };
        let mut v = Vec::new();
        p.encode(&mut v).unwrap();
        prop_assert_eq!(v.len(), p.encoded_len());
        prop_assert_eq!(&v[..PACKET_HEADER_LEN], &p.header().unwrap()[..]);
        prop_assert_eq!(Icmpv6Packet::decode(&v), Ok(p));
        // A flipped bit anywhere the checksum covers (addresses and message) is caught.
        let mut t = v.clone();
        let i = 8 + flip % (v.len() - 8);
        t[i] ^= 0x80;
        prop_assert!(Icmpv6Packet::decode(&t).is_err(), "flip at {}", i);
        // Wrapped for the out-of-band path.
        let oob = OobIcmp { orig_dst: orig_dst.into(), packet: p };
        let mut w = Vec::new();
        oob.encode(&mut w).unwrap();
        prop_assert_eq!(w.len(), oob.encoded_len());
        prop_assert_eq!(&w[16..], &v[..]);
        let got = OobIcmp::decode(&w);
        if w.len() <= MAX_OOB_LEN {
            prop_assert_eq!(got, Ok(oob));
        } else {
            prop_assert!(got.is_err());
        }
    }

    #[test]
    fn icmpv6_decoder_survives_mangled_packets(body in bytes(200), cut in any::<usize>(),
                                               at in any::<usize>(), x in any::<u8>()) {
        let p = Icmpv6Packet::error(
            "4a9::1".parse().unwrap(), "5ff::2".parse().unwrap(),
            Icmpv6Type::TIME_EXCEEDED, Icmpv6Code::HOP_LIMIT_EXCEEDED, &body,
        );
        let mut v = Vec::new();
        p.encode(&mut v).unwrap();
        prop_assert!(Icmpv6Packet::decode(&v[..cut % v.len()]).is_err());
        let n = v.len();
        v[at % n] ^= x;
        let _ = Icmpv6Packet::decode(&v);
        let _ = OobIcmp::decode(&v);
    }

    #[test]
    fn message_packet_round_trips(id in any::<[u8; 8]>(), which in 0u8..9, reply in any::<bool>(),
                                  a in any::<u64>(), b in any::<u64>(), c in any::<u64>(),
                                  data in bytes(1400), sum in any::<[u8; 32]>()) {
        let topic = &data[..data.len().min(255)];
        let (flags, body) = match which {
            0 => (MessageFlags::INIT, MessageBody::Init { total_len: a, topic }),
            1 => (MessageFlags::INIT.with(MessageFlags::ACK), MessageBody::InitAck { total_len: a, topic_len: b as u8 }),
            2 => (MessageFlags::CHUNK, MessageBody::Chunk { index: a, offset: b, data: &data }),
            3 => (MessageFlags::CHUNK.with(MessageFlags::ACK), MessageBody::ChunkAck { index: a, offset: b, size: c }),
            4 => (MessageFlags::DONE, MessageBody::Done { chunk_count: a, checksum: sum }),
            5 => (MessageFlags::DONE.with(MessageFlags::ACK), MessageBody::Done { chunk_count: a, checksum: sum }),
            6 => (MessageFlags::READ, MessageBody::Empty),
            7 => (MessageFlags::ABORTED, MessageBody::Empty),
            _ => (MessageFlags::READ.with(MessageFlags::ACK), MessageBody::Empty),
        };
        let flags = if reply { flags.with(MessageFlags::REPLY) } else { flags };
        let p = MessagePacket { id: MessageId(id), flags, body };
        let mut v = Vec::new();
        p.encode(&mut v);
        prop_assert_eq!(v.len(), p.encoded_len());
        prop_assert_eq!(MessagePacket::decode(&v), Ok(p));
    }

    #[test]
    fn framing_round_trips(tag in any::<u64>(), id in any::<[u8; 8]>(), pk in any::<[u8; 32]>(),
                           ip6 in any::<[u8; 16]>(), a in bytes(300), b in bytes(3000),
                           n in any::<u16>(), which in 0u8..10, flag in any::<bool>()) {
        let id = MessageId(id);
        let text = String::from_utf8_lossy(&a).into_owned();
        let headers = vec![Header { name: "authorization", value: &a }, Header { name: "content-type", value: b"application/json" }];
        let msg = match which {
            0 => Message::Push(Push {
                tag, dst: if flag { Destination::PublicKey(pk) } else { Destination::Ip(ip6) },
                topic: &a, payload: &b, reply_to: flag.then_some(id), reply_timeout_ms: (!flag).then_some(u32::from(n)),
            }),
            1 => Message::Pushed(Pushed { tag, id }),
            2 => Message::Subscribe(Subscribe { tag, topic: flag.then_some(&a[..]) }),
            3 => Message::Deliver(Deliver { id, src_ip: ip6, src_pk: pk, dst_ip: ip6, dst_pk: pk, topic: &a, payload: &b, reply_tag: flag.then_some(tag) }),
            4 => Message::Reply(Reply { tag, id, payload: &b }),
            5 => Message::StatusQuery(StatusQuery { tag, id }),
            6 => Message::Status(Status { tag, id, dst_ip: ip6,
                state: if flag { MessageState::Sending { pending: tag, sent: 1, acked: u64::from(n) } } else { MessageState::Read },
                created: tag, deadline: tag / 2, msg_len: u64::from(n) }),
            7 => Message::Error(ErrorMsg { tag, code: ErrorCode(n), message: &text }),
            _ => {
                let items = vec![
                RelayItem::Request(RelayRequest { id: tag, method: "PUT", target: &a, headers: headers.clone(), body: &b, more: flag }),
                RelayItem::Response(RelayResponse { id: tag, status: n, headers, body: &b, more: !flag }),
                RelayItem::Body(BodyPart { id: tag, offset: u64::from(n), data: &a, more: flag }),
                RelayItem::Cancel { id: tag, code: ErrorCode::UNREACHABLE },
                RelayItem::Window { id: tag, offset: u64::from(n) },
                RelayItem::Ping { nonce: tag },
                RelayItem::Pong { nonce: u64::from(n) },
                ];
                if which == 8 { Message::Envelope(Envelope { items }) } else { Message::ResponseEnvelope(Envelope { items }) }
            }
        };
        let mut buf = BytesMut::new();
        msg.encode(framing::DEFAULT_MAX_BODY, &mut buf).unwrap();
        // Two frames back to back split cleanly.
        let mut two = buf.clone();
        two.extend_from_slice(&buf);
        for _ in 0..2 {
            let (kind, body) = framing::split_frame(&mut two, framing::DEFAULT_MAX_BODY).unwrap().unwrap();
            prop_assert_eq!(kind, msg.kind());
            prop_assert_eq!(&Message::decode(kind, &body).unwrap(), &msg);
        }
        prop_assert!(two.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in bytes(600)) {
        let mut buf = BytesMut::from(&data[..]);
        let mut d = Deframer::new();
        while let Ok(Some(_)) = d.next_frame(&mut buf) {}
        let _ = decode_datagram(&data[..]);
        let _ = decode_babel_packet(&data);
        let _ = MessagePacket::decode(&data);
        let _ = Icmpv6Packet::decode(&data);
        let _ = OobIcmp::decode(&data);
        let mut buf = BytesMut::from(&data[..]);
        if let Ok(Some((kind, body))) = framing::split_frame(&mut buf, 1 << 16) {
            let _ = Message::decode(kind, &body);
        }
        for k in [Kind::PUSH, Kind::DELIVER, Kind::ENVELOPE, Kind::STATUS, Kind::ERROR] {
            let _ = Message::decode(k, &data);
        }
    }

    #[test]
    fn decoded_tlvs_reencode_to_same_meaning(ty in prop_oneof![Just(4u8), Just(5), Just(8), Just(9), Just(10)], body in bytes(80)) {
        // Whatever a stream decodes re-encodes to something that decodes to the same value.
        let mut frame = vec![1, 1, 0, 0, 42, 3];
        frame.extend_from_slice(&(body.len() as u16 + 2).to_be_bytes());
        frame.push(ty);
        frame.push(body.len() as u8);
        frame.extend_from_slice(&body);
        if let Ok(Frame::Control(t)) = decode_datagram(&frame[..]) {
            let mut v = Vec::new();
            t.encode_frame(&mut v);
            prop_assert_eq!(decode_datagram(&v[..]).unwrap(), Frame::Control(t));
        }
    }

    #[test]
    fn subnet_display_parses_back(s in v6_subnet()) {
        prop_assert_eq!(s.to_string().parse::<Subnet>().unwrap(), s);
    }
}
