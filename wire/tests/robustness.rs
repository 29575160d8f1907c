//! What a hostile or broken peer can send: lies in inner lengths, bad headers, oversized
//! lengths. Each case is followed by a valid frame, which must still decode: a bad unit is
//! skipped and counted, never allowed to shift the stream.

use bytes::BytesMut;
use hyphae_wire::DecodeError;
use hyphae_wire::babel::{Hello, SkipReason, Tlv, TlvType};
use hyphae_wire::deframer::{Deframer, Frame};
use hyphae_wire::framing::{self, Kind, Message, Pushed};
use hyphae_wire::message::MessageId;
use hyphae_wire::{Interval, SeqNo};

const UPDATE: &str = "010100002a03003c083a0200400075300000000004a959476719badc8e08f198dcea2bf9ae8678eb92cd7cf6d0fbb6ea5e5c9a48491778d01bf2be010000ccfd502d4233";

fn hello() -> Vec<u8> {
    let mut v = Vec::new();
    Tlv::Hello(Hello::unicast(SeqNo(7), Interval::from_secs(20))).encode_frame(&mut v);
    v
}

/// Deframes `bad` followed by a valid Hello; returns the first item and checks the Hello.
fn then_hello(bad: &[u8]) -> Frame<BytesMut> {
    let mut buf = BytesMut::from(bad);
    buf.extend_from_slice(&hello());
    let mut d = Deframer::new();
    let first = d
        .next_frame(&mut buf)
        .unwrap()
        .expect("bad frame is delimited");
    let second = d.next_frame(&mut buf).unwrap().expect("next frame decodes");
    assert!(
        matches!(second, Frame::Control(Tlv::Hello(h)) if h.seqno == SeqNo(7)),
        "{second:?}"
    );
    assert!(buf.is_empty());
    first
}

fn skipped(f: &Frame<BytesMut>) -> SkipReason {
    match f {
        Frame::Skipped(s) => s.reason,
        other => panic!("expected a skip, got {other:?}"),
    }
}

#[test]
fn tlv_length_longer_than_packet_is_skipped() {
    let mut u = hex::decode(UPDATE).unwrap();
    u[9] += 1; // TLV length 59 in a 60-byte body
    assert_eq!(
        skipped(&then_hello(&u)),
        SkipReason::Malformed(DecodeError::UnexpectedEnd)
    );
}

#[test]
fn tlv_length_shorter_than_packet_is_skipped() {
    let mut u = hex::decode(UPDATE).unwrap();
    u[9] -= 1;
    assert!(matches!(skipped(&then_hello(&u)), SkipReason::Malformed(_)));
}

#[test]
fn prefix_length_that_disagrees_with_tlv_length_is_skipped() {
    let mut u = hex::decode(UPDATE).unwrap();
    u[12] = 128; // plen /128 needs 16 prefix bytes; the TLV holds 8
    assert!(matches!(skipped(&then_hello(&u)), SkipReason::Malformed(_)));
}

#[test]
fn unknown_ae_is_skipped_without_losing_the_router_id() {
    // The reference fails such an Update without consuming its router id and desynchronises.
    let mut u = hex::decode(UPDATE).unwrap();
    u[10] = 7;
    assert_eq!(
        skipped(&then_hello(&u)),
        SkipReason::Malformed(DecodeError::UnsupportedAe(7))
    );
}

#[test]
fn extra_tlv_in_packet_is_skipped() {
    let h = hello();
    let mut two = h.clone();
    two.extend_from_slice(&h[8..]); // a second TLV inside the same Babel packet
    let body_len = (two.len() - 8) as u16;
    two[6..8].copy_from_slice(&body_len.to_be_bytes());
    assert_eq!(
        skipped(&then_hello(&two)),
        SkipReason::Malformed(DecodeError::TrailingData("babel packet"))
    );
}

#[test]
fn bad_babel_magic_version_and_unknown_tlv_are_skipped() {
    let mut m = hello();
    m[4] = 43;
    assert!(matches!(
        skipped(&then_hello(&m)),
        SkipReason::BabelHeader(_)
    ));
    let mut v = hello();
    v[5] = 2;
    assert_eq!(
        skipped(&then_hello(&v)),
        SkipReason::BabelHeader(DecodeError::UnsupportedVersion(2))
    );
    let mut t = hello();
    t[8] = 0x7f;
    let f = then_hello(&t);
    assert!(
        matches!(f, Frame::Skipped(s) if s.tlv_type == Some(TlvType(0x7f)) && s.reason == SkipReason::UnknownTlv)
    );
}

#[test]
fn short_babel_bodies_are_skipped() {
    for body_len in 0..2u16 {
        let mut f = vec![1, 1, 0, 0, 42, 3];
        f.extend_from_slice(&body_len.to_be_bytes());
        f.extend(std::iter::repeat_n(4, usize::from(body_len)));
        assert!(matches!(then_hello(&f), Frame::Skipped(_)));
    }
}

#[test]
fn zero_hop_count_seqno_request_is_skipped() {
    let mut f = vec![1, 1, 0, 0, 42, 3, 0, 56, 10, 54, 2, 64, 0, 1, 0, 0];
    f.extend_from_slice(&[9; 40]);
    f.extend_from_slice(&[4, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        skipped(&then_hello(&f)),
        SkipReason::Malformed(DecodeError::InvalidValue("seqno request hop count"))
    );
    f[14] = 64;
    let mut buf = BytesMut::from(&f[..]);
    assert!(matches!(
        Deframer::new().next_frame(&mut buf),
        Ok(Some(Frame::Control(Tlv::SeqnoRequest(_))))
    ));
}

#[test]
fn corrupt_outer_header_is_fatal() {
    for bad in [[2u8, 0, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0]] {
        let mut buf = BytesMut::from(&bad[..]);
        buf.extend_from_slice(&hello());
        assert!(Deframer::new().next_frame(&mut buf).is_err(), "{bad:?}");
    }
}

#[test]
fn a_64k_data_frame_is_one_frame_and_the_next_still_decodes() {
    let mut f = vec![1, 0, 0, 0, 0, 0xff, 0xff, 64];
    f.extend_from_slice(&[4; 32]);
    f.extend(std::iter::repeat_n(0xab, 0xffff));
    match then_hello(&f) {
        Frame::Data(d) => assert_eq!(d.body().len(), 0xffff),
        other => panic!("{other:?}"),
    }
}

#[test]
fn skipped_frames_are_counted() {
    let mut u = hex::decode(UPDATE).unwrap();
    u[9] += 1;
    let mut buf = BytesMut::from(&u[..]);
    buf.extend_from_slice(&u);
    buf.extend_from_slice(&hello());
    let mut d = Deframer::new();
    while d.next_frame(&mut buf).unwrap().is_some() {}
    assert_eq!((d.stats().skipped, d.stats().control_frames), (2, 1));
}

#[test]
fn framing_caps_length_before_allocating_and_rejects_trailing_bytes() {
    let mut huge = BytesMut::from(&b"HY\x01\x02\xff\xff\xff\xff"[..]);
    let err = framing::split_frame(&mut huge, 1 << 20).unwrap_err();
    assert!(matches!(
        err,
        DecodeError::TooLarge {
            len: 0xffff_ffff,
            ..
        }
    ));
    assert!(
        huge.capacity() < 1 << 20,
        "nothing was reserved for the claimed length"
    );
    assert_eq!(
        framing::split_frame(&mut BytesMut::from(&b"XY\x01\x02\0\0\0\0"[..]), 10),
        Err(DecodeError::BadMagic("frame header"))
    );
    assert_eq!(
        framing::split_frame(&mut BytesMut::from(&b"HY\x02\x02\0\0\0\0"[..]), 10),
        Err(DecodeError::UnsupportedVersion(2))
    );

    let mut buf = BytesMut::new();
    Message::Pushed(Pushed {
        tag: 1,
        id: MessageId([3; 8]),
    })
    .encode(100, &mut buf)
    .unwrap();
    // Every strict prefix is "need more".
    for n in 0..buf.len() {
        let mut p = BytesMut::from(&buf[..n]);
        assert_eq!(framing::split_frame(&mut p, 100), Ok(None), "prefix {n}");
    }
    // A body with a byte too many (length patched to match) is a per-frame error.
    let mut long = buf.clone();
    long.extend_from_slice(&[0]);
    let len = (long.len() - 8) as u32;
    long[4..8].copy_from_slice(&len.to_be_bytes());
    let (kind, body) = framing::split_frame(&mut long, 100).unwrap().unwrap();
    assert_eq!(
        Message::decode(kind, &body),
        Err(DecodeError::TrailingData("frame body"))
    );
    assert_eq!(
        Message::decode(Kind(0x55), &body),
        Err(DecodeError::InvalidValue("frame kind"))
    );
    // Encoding over the limit fails and leaves the buffer as it was.
    let mut out = BytesMut::from(&b"keep"[..]);
    let big = vec![0u8; 200];
    let push = framing::Push {
        tag: 0,
        dst: framing::Destination::Ip([0; 16]),
        topic: b"",
        payload: &big,
        reply_to: None,
        reply_timeout_ms: None,
    };
    assert!(Message::Push(push).encode(100, &mut out).is_err());
    assert_eq!(&out[..], b"keep");
}
