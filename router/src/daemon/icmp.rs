//! Out-of-band ICMPv6 errors, as the reference sends them when it cannot forward a frame: the
//! hop limit ran out (time exceeded) or there is no route (destination unreachable).
//!
//! The error goes back to the frame's source, sealed for it with user-data kind
//! [`UserDataKind::OOB_ICMP`]:
//!
//! ```text
//! original destination (16) | IPv6 header (40): src = this node, dst = original source,
//!                             hop limit 64, next header 58
//!                           | ICMPv6: type, code 0, checksum, 4 unused bytes,
//!                             the original still-sealed body (dropped if over 1232 bytes)
//! ```
//!
//! The frame itself starts with hop limit 64 and, as the reference routes its own frames
//! through its forwarding step, leaves this node with 63.

use std::net::Ipv6Addr;

use bytes::BytesMut;
use hyphae_wire::data::DataHeader;
use hyphae_wire::seal::{SealingKey, UserDataKind};

/// ICMPv6 "time exceeded".
pub(crate) const TIME_EXCEEDED: u8 = 3;
/// ICMPv6 "destination unreachable".
pub(crate) const DEST_UNREACHABLE: u8 = 1;
/// Largest original body quoted, so the packet stays within the IPv6 minimum MTU.
const MAX_QUOTE: usize = 1280 - 48;

/// The IPv6 packet carrying an ICMPv6 error of `icmp_type` about a frame from `orig_src` whose
/// sealed body was `quote`.
pub(crate) fn icmp_packet(
    icmp_type: u8,
    own: Ipv6Addr,
    orig_src: Ipv6Addr,
    quote: &[u8],
) -> Vec<u8> {
    let quote = if quote.len() > MAX_QUOTE {
        &[][..]
    } else {
        quote
    };
    let icmp_len = 8 + quote.len();
    let mut p = Vec::with_capacity(40 + icmp_len);
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(icmp_len as u16).to_be_bytes());
    p.extend_from_slice(&[58, 64]);
    p.extend_from_slice(&own.octets());
    p.extend_from_slice(&orig_src.octets());
    p.extend_from_slice(&[icmp_type, 0, 0, 0, 0, 0, 0, 0]);
    p.extend_from_slice(quote);
    let sum = checksum(own, orig_src, &p[40..]);
    p[42..44].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The ICMPv6 checksum (RFC 4443 section 2.3) of `msg` (checksum field zero) between `src` and
/// `dst`.
pub(crate) fn checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The whole data frame carrying the error back to `orig_src`, sealed with `key`.
pub(crate) fn error_frame(
    key: &SealingKey,
    nonce: [u8; 12],
    icmp_type: u8,
    own: Ipv6Addr,
    orig_src: Ipv6Addr,
    orig_dst: Ipv6Addr,
    quote: &[u8],
) -> BytesMut {
    let mut plain = orig_dst.octets().to_vec();
    plain.extend_from_slice(&icmp_packet(icmp_type, own, orig_src, quote));
    let mut body = Vec::with_capacity(plain.len() + hyphae_wire::seal::SEAL_OVERHEAD);
    key.seal(nonce, UserDataKind::OOB_ICMP, &plain, &mut body);
    let mut out = BytesMut::with_capacity(40 + body.len());
    // Cannot fail: the body is at most 16 + 40 + 8 + 1232 + 32 bytes.
    let _ = DataHeader {
        hop_limit: 63,
        src: own,
        dst: orig_src,
    }
    .emit_frame(&body, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_layout_and_checksum() {
        let own: Ipv6Addr = "4a9::1".parse().unwrap();
        let src: Ipv6Addr = "5ff::2".parse().unwrap();
        let p = icmp_packet(TIME_EXCEEDED, own, src, b"abc");
        assert_eq!(p.len(), 40 + 8 + 3);
        assert_eq!(p[0] >> 4, 6);
        assert_eq!(u16::from_be_bytes([p[4], p[5]]), 11);
        assert_eq!((p[6], p[7]), (58, 64));
        assert_eq!(&p[8..24], &own.octets());
        assert_eq!(&p[24..40], &src.octets());
        assert_eq!((p[40], p[41]), (TIME_EXCEEDED, 0));
        // A correct checksum makes the sum over pseudo-header and message all ones.
        assert_eq!(checksum(own, src, &p[40..]), 0);
        assert_eq!(&p[48..], b"abc");
        // Over the minimum MTU the quote is dropped.
        assert_eq!(
            icmp_packet(DEST_UNREACHABLE, own, src, &[0; 1300]).len(),
            48
        );
    }
}
