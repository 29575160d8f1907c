//! ICMPv6 packets ([RFC 4443]) in IPv6 ([RFC 8200]), and the out-of-band ICMP error that the
//! reference sends back when it cannot forward a data frame.
//!
//! One IPv6 packet carrying one ICMPv6 message, with no extension headers:
//!
//! ```text
//!  0               1               2               3
//! +-------+-------+---------------+---------------+---------------+
//! |version| traffic class |             flow label                |  IPv6 (RFC 8200 s. 3)
//! +-------+-------+---------------+---------------+---------------+
//! |     payload length (u16)      |  next hdr 58  |   hop limit   |
//! +---------------+---------------+---------------+---------------+
//! |                      source address (16)                      |
//! |                   destination address (16)                    |
//! +---------------+---------------+---------------+---------------+
//! |     type      |     code      |  checksum (RFC 4443 s. 2.3)   |  ICMPv6 (RFC 4443 s. 2.1)
//! +---------------+---------------+---------------+---------------+
//! |  rest of header (4): unused (0), or the MTU for Packet Too Big |
//! +---------------------------------------------------------------+
//! |   body: for errors, as much of the invoking packet as fits    |
//! ```
//!
//! The version is 6; traffic class and flow label are zero on send and ignored on receive.
//!
//! [`Icmpv6Packet`] is the typed value: [`Icmpv6Packet::decode`] borrows the body from the
//! input and checks version, next header, payload length and checksum;
//! [`Icmpv6Packet::encode`] writes the checksum. Type and code are open newtypes, so any
//! message round-trips.
//!
//! # Out-of-band errors
//!
//! A reference node that has to drop a data frame (hop limit exhausted, no route) can't quote
//! the IPv6 packet inside, which is sealed for someone else. It sends the frame's source a data
//! frame of user-data kind [`UserDataKind::OOB_ICMP`] instead, whose plaintext is
//!
//! ```text
//! original destination (16) | IPv6 header: src = this node, dst = original source,
//!                           |              hop limit 64, next header 58
//!                           | ICMPv6: type, code, checksum, 4 zero bytes,
//!                           |         the original still-sealed body, dropped if over 1232 bytes
//! ```
//!
//! ([`OobIcmp`]; `router.rs::oob_icmp` in mycelium 0.7.10). The receiver opens the quoted body
//! with the key it shares with the original destination to learn which of its packets failed.
//!
//! [RFC 4443]: https://www.rfc-editor.org/rfc/rfc4443
//! [RFC 8200]: https://www.rfc-editor.org/rfc/rfc8200

use core::fmt;
use core::net::Ipv6Addr;

use bytes::BufMut;

use crate::coding::Reader;
use crate::data::DataHeader;
use crate::error::DecodeError;
use crate::seal::{NONCE_LEN, SealingKey, UserDataKind};

/// IPv6 header length (RFC 8200 section 3).
pub const IPV6_HEADER_LEN: usize = 40;
/// ICMPv6 header length: type, code, checksum and the 4-byte rest of header.
pub const ICMP_HEADER_LEN: usize = 8;
/// Everything [`Icmpv6Packet::encode`] writes before the body.
pub const PACKET_HEADER_LEN: usize = IPV6_HEADER_LEN + ICMP_HEADER_LEN;
/// The IPv6 next-header value for ICMPv6.
pub const NEXT_HEADER_ICMPV6: u8 = 58;
/// The IPv6 minimum link MTU (RFC 8200 section 5).
pub const IPV6_MIN_MTU: usize = 1280;
/// The longest quote an error may carry and still fit in [`IPV6_MIN_MTU`] (RFC 4443 section
/// 2.4 (c)): 1232 bytes.
pub const MAX_QUOTE: usize = IPV6_MIN_MTU - PACKET_HEADER_LEN;
/// The hop limit of the errors the reference builds.
pub const ERROR_HOP_LIMIT: u8 = 64;
/// Everything [`OobIcmp::encode`] writes before the quoted body: original destination and
/// [`PACKET_HEADER_LEN`].
pub const OOB_HEADER_LEN: usize = 16 + PACKET_HEADER_LEN;
/// The longest out-of-band plaintext the reference accepts: original destination and a
/// minimum-MTU packet.
pub const MAX_OOB_LEN: usize = 16 + IPV6_MIN_MTU;

/// The ICMPv6 message type (open: unknown values are kept and printed).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Icmpv6Type(pub u8);

impl Icmpv6Type {
    /// Destination Unreachable (RFC 4443 section 3.1).
    pub const DEST_UNREACHABLE: Self = Self(1);
    /// Packet Too Big (section 3.2); the rest of header is the MTU.
    pub const PACKET_TOO_BIG: Self = Self(2);
    /// Time Exceeded (section 3.3).
    pub const TIME_EXCEEDED: Self = Self(3);
    /// Parameter Problem (section 3.4); the rest of header is a pointer.
    pub const PARAMETER_PROBLEM: Self = Self(4);
    /// Echo Request (section 4.1).
    pub const ECHO_REQUEST: Self = Self(128);
    /// Echo Reply (section 4.2).
    pub const ECHO_REPLY: Self = Self(129);

    /// Whether this is an error message (types 0 to 127, RFC 4443 section 2.1).
    pub fn is_error(self) -> bool {
        self.0 < 128
    }
}

impl fmt::Debug for Icmpv6Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::DEST_UNREACHABLE => f.write_str("DEST_UNREACHABLE"),
            Self::PACKET_TOO_BIG => f.write_str("PACKET_TOO_BIG"),
            Self::TIME_EXCEEDED => f.write_str("TIME_EXCEEDED"),
            Self::PARAMETER_PROBLEM => f.write_str("PARAMETER_PROBLEM"),
            Self::ECHO_REQUEST => f.write_str("ECHO_REQUEST"),
            Self::ECHO_REPLY => f.write_str("ECHO_REPLY"),
            Self(v) => write!(f, "Icmpv6Type({v})"),
        }
    }
}

/// The ICMPv6 code (open). Its meaning depends on the type, so the constants are named for
/// theirs, and several share a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Icmpv6Code(pub u8);

impl Icmpv6Code {
    /// Destination Unreachable: no route to destination.
    pub const NO_ROUTE: Self = Self(0);
    /// Destination Unreachable: address unreachable.
    pub const ADDRESS_UNREACHABLE: Self = Self(3);
    /// Destination Unreachable: source address failed ingress/egress policy.
    pub const SOURCE_POLICY_FAILED: Self = Self(5);
    /// Time Exceeded: hop limit exceeded in transit.
    pub const HOP_LIMIT_EXCEEDED: Self = Self(0);
    /// The code of Packet Too Big, echo and most other messages.
    pub const ZERO: Self = Self(0);
}

/// One IPv6 packet holding one ICMPv6 message, borrowing its body.
///
/// Traffic class and flow label are not kept: they are zero on send, as in the packets the
/// reference builds, and ignored on receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmpv6Packet<'a> {
    /// IPv6 source.
    pub src: Ipv6Addr,
    /// IPv6 destination.
    pub dst: Ipv6Addr,
    /// IPv6 hop limit.
    pub hop_limit: u8,
    /// ICMPv6 type.
    pub ty: Icmpv6Type,
    /// ICMPv6 code.
    pub code: Icmpv6Code,
    /// The 4 bytes after the checksum: unused (zero) in Destination Unreachable and Time
    /// Exceeded, the MTU in Packet Too Big, the pointer in Parameter Problem, identifier and
    /// sequence number in echo messages.
    pub rest: [u8; 4],
    /// What follows: for errors, the start of the invoking packet.
    pub body: &'a [u8],
}

impl<'a> Icmpv6Packet<'a> {
    /// An error of `ty` and `code` from `src` to `dst` with hop limit [`ERROR_HOP_LIMIT`],
    /// quoting as much of `invoking` as fits in the minimum MTU (the first [`MAX_QUOTE`]
    /// bytes, RFC 4443 section 2.4 (c)).
    pub fn error(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        ty: Icmpv6Type,
        code: Icmpv6Code,
        invoking: &'a [u8],
    ) -> Self {
        Self {
            src,
            dst,
            hop_limit: ERROR_HOP_LIMIT,
            ty,
            code,
            rest: [0; 4],
            body: &invoking[..invoking.len().min(MAX_QUOTE)],
        }
    }

    /// A Packet Too Big error announcing `mtu`, otherwise as [`Self::error`].
    pub fn packet_too_big(src: Ipv6Addr, dst: Ipv6Addr, mtu: u32, invoking: &'a [u8]) -> Self {
        Self {
            rest: mtu.to_be_bytes(),
            ..Self::error(
                src,
                dst,
                Icmpv6Type::PACKET_TOO_BIG,
                Icmpv6Code::ZERO,
                invoking,
            )
        }
    }

    /// The MTU a Packet Too Big message announces; `None` for other types.
    pub fn mtu(&self) -> Option<u32> {
        (self.ty == Icmpv6Type::PACKET_TOO_BIG).then_some(u32::from_be_bytes(self.rest))
    }

    /// Decodes a packet that fills `buf` exactly: IPv6 version 6, next header 58 (no extension
    /// headers), a payload length equal to what follows the IPv6 header, an ICMPv6 message of
    /// at least [`ICMP_HEADER_LEN`] bytes, and a valid checksum.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let [version_class, ..] = r.array::<4>()?;
        if version_class >> 4 != 6 {
            return Err(DecodeError::UnsupportedVersion(version_class >> 4));
        }
        let payload_len = r.u16()?;
        if r.u8()? != NEXT_HEADER_ICMPV6 {
            return Err(DecodeError::InvalidValue("IPv6 next header"));
        }
        let hop_limit = r.u8()?;
        let src = r.ipv6()?;
        let dst = r.ipv6()?;
        let message = r.take(usize::from(payload_len))?;
        r.finish("IPv6 packet")?;
        if message.len() < ICMP_HEADER_LEN {
            return Err(DecodeError::InvalidLength {
                what: "ICMPv6 message",
                len: message.len(),
            });
        }
        // Fuzzers can't forge checksums; let them past it (the encoder always writes one).
        if !cfg!(fuzzing) && checksum(src, dst, message) != 0 {
            return Err(DecodeError::InvalidValue("ICMPv6 checksum"));
        }
        let mut m = Reader::new(message);
        let ty = Icmpv6Type(m.u8()?);
        let code = Icmpv6Code(m.u8()?);
        let _checksum = m.u16()?;
        Ok(Self {
            src,
            dst,
            hop_limit,
            ty,
            code,
            rest: m.array()?,
            body: m.rest(),
        })
    }

    /// The IPv6 and ICMPv6 headers, checksum filled in: everything [`Self::encode`] writes
    /// before the body. Fails if the message is too long for the IPv6 payload length.
    pub fn header(&self) -> Result<[u8; PACKET_HEADER_LEN], DecodeError> {
        let message_len = ICMP_HEADER_LEN + self.body.len();
        let payload_len = u16::try_from(message_len).map_err(|_| DecodeError::TooLarge {
            what: "ICMPv6 message",
            len: message_len,
            max: u16::MAX.into(),
        })?;
        let mut h = [0; PACKET_HEADER_LEN];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&payload_len.to_be_bytes());
        h[6] = NEXT_HEADER_ICMPV6;
        h[7] = self.hop_limit;
        h[8..24].copy_from_slice(&self.src.octets());
        h[24..40].copy_from_slice(&self.dst.octets());
        h[40] = self.ty.0;
        h[41] = self.code.0;
        h[44..48].copy_from_slice(&self.rest);
        let mut sum = Checksum::pseudo_header(self.src, self.dst, message_len);
        sum.add(&h[IPV6_HEADER_LEN..]);
        sum.add(self.body);
        h[42..44].copy_from_slice(&sum.finish().to_be_bytes());
        Ok(h)
    }

    /// Appends the packet. Fails, appending nothing, if the body is too long for the IPv6
    /// payload length (over 65527 bytes).
    pub fn encode<B: BufMut>(&self, buf: &mut B) -> Result<(), DecodeError> {
        buf.put_slice(&self.header()?);
        buf.put_slice(self.body);
        Ok(())
    }

    /// The number of bytes [`Self::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        PACKET_HEADER_LEN + self.body.len()
    }
}

/// The ICMPv6 checksum (RFC 4443 section 2.3): the one's complement of the one's complement
/// sum over the IPv6 pseudo-header (RFC 8200 section 8.1: `src`, `dst`, the length of
/// `message`, next header 58) and `message` as it stands.
///
/// With the checksum field of `message` zero this is the value to write there; over a message
/// that carries a correct checksum it is zero.
pub fn checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    let mut sum = Checksum::pseudo_header(src, dst, message.len());
    sum.add(message);
    sum.finish()
}

/// A running RFC 1071 sum of big-endian 16-bit words. Only the last piece added may have an
/// odd length (it is padded with a zero byte).
pub(crate) struct Checksum(pub(crate) u64);

impl Checksum {
    fn pseudo_header(src: Ipv6Addr, dst: Ipv6Addr, len: usize) -> Self {
        Self::pseudo_header_for(src, dst, len, NEXT_HEADER_ICMPV6)
    }

    /// The sum over the IPv6 pseudo-header (RFC 8200 section 8.1) of an upper-layer packet of
    /// `len` bytes and protocol `next_header`.
    pub(crate) fn pseudo_header_for(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        len: usize,
        next_header: u8,
    ) -> Self {
        let mut sum = Self(0);
        sum.add(&src.octets());
        sum.add(&dst.octets());
        // The upper-layer length is 32 bits; an IPv6 payload can't come near that.
        sum.add(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        sum.add(&[0, 0, 0, next_header]);
        sum
    }

    /// The sum folded to 16 bits, not complemented: what a checksum field holds for a packet
    /// whose checksum the receiver completes (a partial checksum).
    pub(crate) fn folded(&self) -> u16 {
        let mut sum = self.0;
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        // The loop leaves at most 16 bits.
        sum as u16
    }

    pub(crate) fn add(&mut self, bytes: &[u8]) {
        // 32-bit words into a 64-bit sum: end-around carry makes the one's complement sum of
        // 32-bit words fold to the sum of 16-bit words (RFC 1071 section 2 (B)), and no piece
        // is long enough to overflow 64 bits.
        let mut quads = bytes.chunks_exact(4);
        for q in &mut quads {
            self.0 += u64::from(u32::from_be_bytes([q[0], q[1], q[2], q[3]]));
        }
        let mut words = quads.remainder().chunks_exact(2);
        for w in &mut words {
            self.0 += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            self.0 += u64::from(u16::from_be_bytes([*last, 0]));
        }
    }

    pub(crate) fn finish(self) -> u16 {
        !self.folded()
    }
}

/// The plaintext of an out-of-band ICMP error ([`UserDataKind::OOB_ICMP`]): the destination of
/// the frame that could not be forwarded, then the ICMPv6 packet about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OobIcmp<'a> {
    /// Destination of the frame the error is about: the receiver opens the quoted body with
    /// the key it shares with this node.
    pub orig_dst: Ipv6Addr,
    /// The ICMPv6 packet; its body is the frame's still-sealed body, or empty.
    pub packet: Icmpv6Packet<'a>,
}

impl<'a> OobIcmp<'a> {
    /// The error this node (`own`) sends about a frame from `frame_src` to `frame_dst` whose
    /// sealed body is `sealed_body`, exactly as the reference builds it: hop limit 64, rest of
    /// header zero, and a quote of the whole body, or none at all if the body is over
    /// [`MAX_QUOTE`] bytes (the reference drops it rather than cut it).
    pub fn new(
        ty: Icmpv6Type,
        code: Icmpv6Code,
        own: Ipv6Addr,
        frame_src: Ipv6Addr,
        frame_dst: Ipv6Addr,
        sealed_body: &'a [u8],
    ) -> Self {
        let quote = match sealed_body.len() > MAX_QUOTE {
            true => &[][..],
            false => sealed_body,
        };
        Self {
            orig_dst: frame_dst,
            packet: Icmpv6Packet::error(own, frame_src, ty, code, quote),
        }
    }

    /// Decodes a plaintext that fills `buf`: the original destination, then an
    /// [`Icmpv6Packet`]. Like the reference, refuses anything over [`MAX_OOB_LEN`] bytes.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        if buf.len() > MAX_OOB_LEN {
            return Err(DecodeError::TooLarge {
                what: "OOB ICMP",
                len: buf.len(),
                max: MAX_OOB_LEN,
            });
        }
        let mut r = Reader::new(buf);
        let orig_dst = r.ipv6()?;
        let packet = Icmpv6Packet::decode(r.rest())?;
        Ok(Self { orig_dst, packet })
    }

    /// Original destination and packet headers: everything [`Self::encode`] writes before the
    /// quoted body.
    pub fn header(&self) -> Result<[u8; OOB_HEADER_LEN], DecodeError> {
        let mut h = [0; OOB_HEADER_LEN];
        h[..16].copy_from_slice(&self.orig_dst.octets());
        h[16..].copy_from_slice(&self.packet.header()?);
        Ok(h)
    }

    /// Appends the plaintext. Fails, appending nothing, as [`Icmpv6Packet::encode`] does.
    pub fn encode<B: BufMut>(&self, buf: &mut B) -> Result<(), DecodeError> {
        buf.put_slice(&self.header()?);
        buf.put_slice(self.packet.body);
        Ok(())
    }

    /// The number of bytes [`Self::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        16 + self.packet.encoded_len()
    }

    /// Appends the whole data frame carrying this error back to the original source, sealed as
    /// [`UserDataKind::OOB_ICMP`] with `key` (shared with the original source), through
    /// [`DataHeader::emit_sealed`] and without an intermediate buffer. The frame goes from the
    /// packet's source to its destination with `hop_limit` (the reference counts its own hop:
    /// 63). Nothing is appended on error.
    pub fn emit_sealed<B: BufMut + AsMut<[u8]>>(
        &self,
        hop_limit: u8,
        key: &SealingKey,
        nonce: [u8; NONCE_LEN],
        out: &mut B,
    ) -> Result<(), DecodeError> {
        let head = self.header()?;
        let header = DataHeader {
            hop_limit,
            src: self.packet.src,
            dst: self.packet.dst,
        };
        header.emit_sealed(
            key,
            nonce,
            UserDataKind::OOB_ICMP,
            &[&head, self.packet.body],
            out,
        )
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;
    use crate::data::{DATA_OVERHEAD, DataFrame};
    use crate::identity::SecretKey;
    use crate::seal::USER_HEADER_LEN;

    /// The node that reports the error, the source of the failed frame, its destination.
    const OWN: Ipv6Addr = Ipv6Addr::new(0x400, 0, 0, 0, 0, 0, 0, 0xb);
    const ORIG_SRC: Ipv6Addr = Ipv6Addr::new(0x4a9, 0, 0, 0, 0, 0, 0, 0xa);
    const ORIG_DST: Ipv6Addr = Ipv6Addr::new(0x5ff, 0, 0, 0, 0, 0, 0, 0xc);

    /// Time Exceeded, hop limit exceeded in transit, quoting 8 bytes; written out from RFC 8200
    /// section 3 and RFC 4443 section 3.3. Checksum 0xe3e3 computed apart from this crate, as a
    /// folded word sum and as the big-endian integer of pseudo-header and message mod 0xffff.
    const TIME_EXCEEDED: &str = concat!(
        "60000000",                         // version 6, traffic class 0, flow label 0
        "0010",                             // payload length 16
        "3a",                               // next header 58
        "40",                               // hop limit 64
        "0400000000000000000000000000000b", // src 400::b
        "04a9000000000000000000000000000a", // dst 4a9::a
        "03",                               // type 3, Time Exceeded
        "00",                               // code 0, hop limit exceeded in transit
        "e3e3",                             // checksum
        "00000000",                         // unused
        "0102030405060708",                 // the quote
    );

    /// Destination Unreachable, address unreachable, quoting 5 bytes (an odd length, so the
    /// checksum pads); written out from RFC 4443 section 3.1. Checksum 0xcc30, computed as
    /// above.
    const DEST_UNREACHABLE: &str = concat!(
        "60000000",
        "000d", // payload length 13
        "3a",
        "40",
        "0400000000000000000000000000000b",
        "04a9000000000000000000000000000a",
        "01",         // type 1, Destination Unreachable
        "03",         // code 3, address unreachable
        "cc30",       // checksum
        "00000000",   // unused
        "6162636465", // "abcde"
    );

    /// Packet Too Big announcing MTU 1280, quoting 4 bytes (RFC 4443 section 3.2). Checksum
    /// 0x8ffb, computed as above.
    const PACKET_TOO_BIG: &str = concat!(
        "60000000",
        "000c",
        "3a",
        "40",
        "0400000000000000000000000000000b",
        "04a9000000000000000000000000000a",
        "02",       // type 2, Packet Too Big
        "00",       // code 0
        "8ffb",     // checksum
        "00000500", // MTU 1280
        "60000000", // the quote
    );

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn encode(p: &Icmpv6Packet<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        p.encode(&mut v).unwrap();
        assert_eq!(v.len(), p.encoded_len());
        v
    }

    fn key() -> SealingKey {
        let a = SecretKey::from_bytes([1; 32]);
        let b = SecretKey::from_bytes([2; 32]);
        SealingKey::new(&a.shared_secret(&b.public_key()))
    }

    #[test]
    fn golden_time_exceeded() {
        let quote = [1, 2, 3, 4, 5, 6, 7, 8];
        let p = Icmpv6Packet::error(
            OWN,
            ORIG_SRC,
            Icmpv6Type::TIME_EXCEEDED,
            Icmpv6Code::HOP_LIMIT_EXCEEDED,
            &quote,
        );
        let golden = unhex(TIME_EXCEEDED);
        assert_eq!(hex::encode(encode(&p)), TIME_EXCEEDED);
        assert_eq!(Icmpv6Packet::decode(&golden), Ok(p));
        assert_eq!(p.mtu(), None);
        assert_eq!(checksum(OWN, ORIG_SRC, &golden[IPV6_HEADER_LEN..]), 0);
    }

    #[test]
    fn golden_dest_unreachable() {
        let p = Icmpv6Packet::error(
            OWN,
            ORIG_SRC,
            Icmpv6Type::DEST_UNREACHABLE,
            Icmpv6Code::ADDRESS_UNREACHABLE,
            b"abcde",
        );
        assert_eq!(hex::encode(encode(&p)), DEST_UNREACHABLE);
        assert_eq!(Icmpv6Packet::decode(&unhex(DEST_UNREACHABLE)), Ok(p));
    }

    #[test]
    fn golden_packet_too_big() {
        let quote = [0x60, 0, 0, 0];
        let p = Icmpv6Packet::packet_too_big(OWN, ORIG_SRC, 1280, &quote);
        assert_eq!(hex::encode(encode(&p)), PACKET_TOO_BIG);
        let golden = unhex(PACKET_TOO_BIG);
        let d = Icmpv6Packet::decode(&golden).unwrap();
        assert_eq!((d, d.mtu()), (p, Some(1280)));
    }

    #[test]
    fn golden_oob_wrapper() {
        let quote = [1, 2, 3, 4, 5, 6, 7, 8];
        let oob = OobIcmp::new(
            Icmpv6Type::TIME_EXCEEDED,
            Icmpv6Code::HOP_LIMIT_EXCEEDED,
            OWN,
            ORIG_SRC,
            ORIG_DST,
            &quote,
        );
        let golden = unhex(&(String::from("05ff000000000000000000000000000c") + TIME_EXCEEDED));
        let mut v = Vec::new();
        oob.encode(&mut v).unwrap();
        assert_eq!((v.len(), &v), (oob.encoded_len(), &golden));
        assert_eq!(OobIcmp::decode(&golden), Ok(oob));
        assert_eq!(oob.header().unwrap()[..], golden[..OOB_HEADER_LEN]);
    }

    #[test]
    fn rfc1071_word_sum() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to 0xddf2.
        let mut s = Checksum(0);
        s.add(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
        assert_eq!(s.finish(), !0xddf2);
        // A trailing odd byte counts as the high half of a word.
        let mut s = Checksum(0);
        s.add(&[0x12]);
        assert_eq!(s.finish(), !0x1200);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for golden in [TIME_EXCEEDED, DEST_UNREACHABLE, PACKET_TOO_BIG] {
            let v = unhex(golden);
            for n in 0..v.len() {
                assert!(Icmpv6Packet::decode(&v[..n]).is_err(), "prefix {n}");
            }
            let mut oob = ORIG_DST.octets().to_vec();
            oob.extend_from_slice(&v);
            for n in 0..oob.len() {
                assert!(OobIcmp::decode(&oob[..n]).is_err(), "oob prefix {n}");
            }
        }
    }

    #[test]
    fn bad_checksum_version_next_header_and_lengths_rejected() {
        let v = unhex(TIME_EXCEEDED);
        let with = |i: usize, b: u8| {
            let mut t = v.clone();
            t[i] = b;
            Icmpv6Packet::decode(&t).map(|_| ())
        };
        assert_eq!(with(0, 0x40), Err(DecodeError::UnsupportedVersion(4)));
        assert_eq!(
            with(6, 0),
            Err(DecodeError::InvalidValue("IPv6 next header"))
        );
        assert_eq!(
            with(6, 17),
            Err(DecodeError::InvalidValue("IPv6 next header"))
        );
        let bad_sum = Err(DecodeError::InvalidValue("ICMPv6 checksum"));
        assert_eq!(with(42, 0xe4), bad_sum);
        // Every bit the checksum covers counts: message, and addresses via the pseudo-header.
        for i in (8..v.len()).filter(|i| !(42..44).contains(i)) {
            assert_eq!(with(i, v[i] ^ 0x01), bad_sum, "flip at {i}");
        }
        // Traffic class, flow label and hop limit are not covered, and are accepted.
        assert!(with(1, 0xff).is_ok() && with(3, 0xff).is_ok() && with(7, 1).is_ok());
        // The payload length must match what follows the IPv6 header.
        assert_eq!(with(5, 0x11), Err(DecodeError::UnexpectedEnd));
        assert_eq!(with(5, 0x0f), Err(DecodeError::TrailingData("IPv6 packet")));
        let mut long = v.clone();
        long.push(0);
        assert_eq!(
            Icmpv6Packet::decode(&long),
            Err(DecodeError::TrailingData("IPv6 packet"))
        );
        // A payload too short for an ICMPv6 header.
        let mut short = v[..IPV6_HEADER_LEN + 4].to_vec();
        short[5] = 4;
        assert_eq!(
            Icmpv6Packet::decode(&short),
            Err(DecodeError::InvalidLength {
                what: "ICMPv6 message",
                len: 4
            })
        );
    }

    #[test]
    fn over_long_quote_dropped_as_the_reference_does() {
        let body = [0x5a; MAX_QUOTE + 1];
        let oob = |n: usize| {
            OobIcmp::new(
                Icmpv6Type::DEST_UNREACHABLE,
                Icmpv6Code::NO_ROUTE,
                OWN,
                ORIG_SRC,
                ORIG_DST,
                &body[..n],
            )
        };
        assert_eq!(oob(MAX_QUOTE).packet.body.len(), MAX_QUOTE);
        assert_eq!(oob(MAX_QUOTE).encoded_len(), MAX_OOB_LEN);
        assert_eq!(oob(MAX_QUOTE + 1).packet.body, b"");
        assert_eq!(oob(MAX_QUOTE + 1).encoded_len(), OOB_HEADER_LEN);
        // The layout the reference writes: hop limit 64, next header 58, rest of header zero.
        let mut v = Vec::new();
        oob(3).encode(&mut v).unwrap();
        assert_eq!((v[16] >> 4, v[16 + 6], v[16 + 7]), (6, 58, 64));
        assert_eq!(&v[16 + 8..16 + 24], &OWN.octets());
        assert_eq!(&v[16 + 24..16 + 40], &ORIG_SRC.octets());
        assert_eq!(&v[16 + 44..16 + 48], &[0; 4]);
        // A local error cuts the quote instead (RFC 4443 section 2.4 (c)).
        let p = Icmpv6Packet::error(
            OWN,
            ORIG_SRC,
            Icmpv6Type::DEST_UNREACHABLE,
            Icmpv6Code::SOURCE_POLICY_FAILED,
            &body,
        );
        assert_eq!(p.body, &body[..MAX_QUOTE]);
        assert_eq!(p.encoded_len(), IPV6_MIN_MTU);
    }

    #[test]
    fn oob_over_the_reference_limit_rejected() {
        let body = alloc::vec![0; MAX_QUOTE + 1];
        let mut p = Icmpv6Packet::error(
            OWN,
            ORIG_SRC,
            Icmpv6Type::DEST_UNREACHABLE,
            Icmpv6Code::NO_ROUTE,
            &[],
        );
        p.body = &body;
        let oob = OobIcmp {
            orig_dst: ORIG_DST,
            packet: p,
        };
        let mut v = Vec::new();
        oob.encode(&mut v).unwrap();
        assert_eq!(
            OobIcmp::decode(&v),
            Err(DecodeError::TooLarge {
                what: "OOB ICMP",
                len: MAX_OOB_LEN + 1,
                max: MAX_OOB_LEN
            })
        );
        assert_eq!(Icmpv6Packet::decode(&v[16..]), Ok(p));
    }

    #[test]
    fn body_too_long_for_payload_length_appends_nothing() {
        let body = alloc::vec![0; usize::from(u16::MAX) - ICMP_HEADER_LEN + 1];
        let mut p = Icmpv6Packet::error(OWN, ORIG_SRC, Icmpv6Type(200), Icmpv6Code(9), &[]);
        p.body = &body[1..];
        let mut v = Vec::new();
        p.encode(&mut v).unwrap();
        assert_eq!(Icmpv6Packet::decode(&v), Ok(p));
        p.body = &body;
        let mut v = alloc::vec![7];
        assert!(matches!(
            p.encode(&mut v),
            Err(DecodeError::TooLarge { len: 65536, .. })
        ));
        assert_eq!(v, [7]);
    }

    #[test]
    fn sealed_oob_frame_opens_and_decodes() {
        // The frame the daemon sends back, built in place ...
        let sealed_body = [0xee; 45];
        let oob = OobIcmp::new(
            Icmpv6Type::TIME_EXCEEDED,
            Icmpv6Code::HOP_LIMIT_EXCEEDED,
            OWN,
            ORIG_SRC,
            ORIG_DST,
            &sealed_body,
        );
        let header = DataHeader {
            hop_limit: 63,
            src: OWN,
            dst: ORIG_SRC,
        };
        let mut frame = Vec::new();
        oob.emit_sealed(63, &key(), [5; NONCE_LEN], &mut frame)
            .unwrap();
        // ... equals the plaintext built whole, sealed, then framed,
        let mut plain = Vec::new();
        oob.encode(&mut plain).unwrap();
        let mut body = Vec::new();
        key().seal([5; NONCE_LEN], UserDataKind::OOB_ICMP, &plain, &mut body);
        let mut two_step = Vec::new();
        header.emit_frame(&body, &mut two_step).unwrap();
        assert_eq!(frame, two_step);
        // ... and the original source opens it and finds the quote in place.
        let mut f = DataFrame::new_checked(&mut frame[..]).unwrap();
        let (kind, range) = f.open(&key()).unwrap();
        assert_eq!(kind, UserDataKind::OOB_ICMP);
        let got = OobIcmp::decode(&f.as_bytes()[range.clone()]).unwrap();
        assert_eq!(got, oob);
        assert_eq!(range.start, DATA_OVERHEAD + USER_HEADER_LEN);
        assert_eq!(
            &f.as_bytes()[range.start + OOB_HEADER_LEN..range.end],
            &sealed_body
        );
    }

    #[test]
    fn type_and_code_print() {
        assert_eq!(
            alloc::format!("{:?}", Icmpv6Type::TIME_EXCEEDED),
            "TIME_EXCEEDED"
        );
        assert_eq!(alloc::format!("{:?}", Icmpv6Type(200)), "Icmpv6Type(200)");
        assert!(Icmpv6Type::PACKET_TOO_BIG.is_error() && !Icmpv6Type::ECHO_REPLY.is_error());
        assert_eq!(Icmpv6Code::SOURCE_POLICY_FAILED, Icmpv6Code(5));
    }
}
