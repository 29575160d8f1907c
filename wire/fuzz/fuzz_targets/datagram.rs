//! The one-shot datagram decoder, the message-packet decoder and the ICMPv6 decoders: no panic,
//! and what decodes re-encodes to the same value.
#![no_main]

use hyphae_wire::data::DataHeader;
use hyphae_wire::deframer::{Frame, decode_datagram};
use hyphae_wire::icmp::{Icmpv6Packet, OobIcmp};
use hyphae_wire::message::MessagePacket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_datagram(data) {
        Ok(Frame::Data(d)) => {
            let mut v = Vec::new();
            DataHeader::parse(&d).emit_frame(d.body(), &mut v).expect("body fits");
            // Only the reserved bytes (2, 3 and 4) may differ: ignored on receive, zero on send.
            assert_eq!(v[..2], data[..2]);
            assert_eq!(v[5..], data[5..]);
        }
        Ok(Frame::Control(t)) => {
            let mut v = Vec::new();
            t.encode_frame(&mut v);
            assert_eq!(decode_datagram(&v[..]).ok(), Some(Frame::Control(t)));
        }
        Ok(Frame::Skipped(_)) | Err(_) => {}
    }
    if let Ok(p) = MessagePacket::decode(data) {
        let mut v = Vec::new();
        p.encode(&mut v);
        assert_eq!(MessagePacket::decode(&v), Ok(p));
    }
    // Under cfg(fuzzing) the checksum is not checked on decode; encode writes a correct one.
    if let Ok(p) = Icmpv6Packet::decode(data) {
        let mut v = Vec::new();
        p.encode(&mut v).expect("a decoded packet fits");
        assert_eq!(Icmpv6Packet::decode(&v), Ok(p));
    }
    if let Ok(o) = OobIcmp::decode(data) {
        let mut v = Vec::new();
        o.encode(&mut v).expect("a decoded packet fits");
        assert_eq!(OobIcmp::decode(&v), Ok(o));
    }
});
