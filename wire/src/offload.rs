//! TUN offloads: the virtio-net header (`IFF_VNET_HDR`) that lets a TUN device hand over TCP
//! super-packets of up to 64 KiB and take them back, and the two transformations around it.
//!
//! * [`Segments`] cuts what the device reads into the IPv6 packets the overlay carries: a TCP
//!   super-packet (`GSO_TCPV6`) into MSS-sized segments with their own sequence numbers, flags
//!   and checksums, and any packet whose checksum the kernel left partial
//!   (`F_NEEDS_CSUM`) into one with its checksum complete.
//! * [`TcpMerge`] recognises consecutive segments of one TCP flow among the packets delivered
//!   to this host, so they are written to the device as one super-packet (one system call and
//!   one pass through the host's TCP stack instead of one per segment).
//!
//! Only TCP directly over IPv6 is merged; a super-packet may also carry hop-by-hop and
//! destination options headers before its TCP header (a socket with `IPV6_DSTOPTS`), and is
//! cut with them on every segment; everything else passes as it is. The header's fields are little-endian (the TUN device's native order on the hosts this
//! runs on; the device is not switched to big-endian).

use core::net::Ipv6Addr;

use crate::error::DecodeError;
use crate::icmp::Checksum;

/// Length of the virtio-net header before every packet on an `IFF_VNET_HDR` device.
pub const VNET_HDR_LEN: usize = 10;
/// `flags`: the checksum at `csum_start + csum_offset` is partial (pseudo-header only).
pub const F_NEEDS_CSUM: u8 = 1;
/// `gso_type`: not a super-packet.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: a TCP over IPv6 super-packet.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type` flag: the flow uses ECN (the first segment carries CWR).
pub const GSO_ECN: u8 = 0x80;

const IPV6_HEADER: usize = 40;
const NEXT_HEADER_TCP: u8 = 6;
const NEXT_HEADER_HOP_BY_HOP: u8 = 0;
const NEXT_HEADER_DEST_OPTS: u8 = 60;
/// Most extension headers walked before a super-packet's TCP header.
const MAX_EXTENSION_HEADERS: usize = 4;
const TCP_MIN_HEADER: usize = 20;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;
/// Where the checksum sits in a TCP header.
const TCP_CSUM: usize = 16;

/// The virtio-net header (`struct virtio_net_hdr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// [`F_NEEDS_CSUM`] or 0.
    pub flags: u8,
    /// [`GSO_NONE`], [`GSO_TCPV6`], ... possibly with [`GSO_ECN`].
    pub gso_type: u8,
    /// Length of the headers before the payload (IPv6 and TCP).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksummed region starts.
    pub csum_start: u16,
    /// Where the checksum field sits, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header at the start of `b`.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let b: &[u8; VNET_HDR_LEN] = b
            .get(..VNET_HDR_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(DecodeError::UnexpectedEnd)?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }
}

/// What [`Segments`] does with the packet.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// Passes it whole, completing a partial checksum at this position if there is one.
    Whole(Option<(usize, usize)>),
    /// Cuts a TCP super-packet whose TCP header starts at `tcp` and whose headers are `hdr`
    /// bytes into `mss`-byte segments.
    Tcp {
        tcp: usize,
        hdr: usize,
        mss: usize,
        ecn: bool,
    },
}

/// The IPv6 packets one read from an `IFF_VNET_HDR` device stands for, written one at a time
/// into buffers the caller provides ([`Segments::next_len`], then [`Segments::write_next`]).
#[derive(Debug)]
pub struct Segments<'a> {
    packet: &'a [u8],
    cut: Cut,
    /// Payload bytes written so far (TCP).
    at: usize,
    /// Packets written so far.
    index: u32,
    done: bool,
}

impl<'a> Segments<'a> {
    /// Checks what the device read: `packet` follows the header `hdr`. Refuses a super-packet
    /// that is not TCP over IPv6 (with at most hop-by-hop and destination options headers
    /// before it), and checksum positions outside the packet.
    pub fn new(hdr: VnetHdr, packet: &'a [u8]) -> Result<Self, DecodeError> {
        let cut = match hdr.gso_type & !GSO_ECN {
            GSO_NONE => {
                let csum = match hdr.flags & F_NEEDS_CSUM {
                    0 => None,
                    _ => {
                        let start = usize::from(hdr.csum_start);
                        let field = start + usize::from(hdr.csum_offset);
                        if field + 2 > packet.len() {
                            return Err(DecodeError::InvalidValue("checksum position"));
                        }
                        Some((start, field))
                    }
                };
                Cut::Whole(csum)
            }
            GSO_TCPV6 => {
                let (tcp, hdr_len) = tcp6_headers(packet)
                    .ok_or(DecodeError::InvalidValue("TCP/IPv6 super-packet"))?;
                if hdr.gso_size == 0 {
                    return Err(DecodeError::InvalidValue("segment size"));
                }
                Cut::Tcp {
                    tcp,
                    hdr: hdr_len,
                    mss: usize::from(hdr.gso_size),
                    ecn: hdr.gso_type & GSO_ECN != 0,
                }
            }
            _ => return Err(DecodeError::InvalidValue("offload type")),
        };
        Ok(Self {
            packet,
            cut,
            at: 0,
            index: 0,
            done: false,
        })
    }

    /// Length of the next packet; `None` when all are written.
    pub fn next_len(&self) -> Option<usize> {
        if self.done {
            return None;
        }
        match self.cut {
            Cut::Whole(_) => Some(self.packet.len()),
            // A super-packet without payload still stands for one (bare) segment.
            Cut::Tcp { hdr, mss, .. } => Some(hdr + (self.packet.len() - hdr - self.at).min(mss)),
        }
    }

    /// Writes the next packet into `out` (at least [`Self::next_len`] bytes) and returns its
    /// length; `None` when all are written or `out` is too short (then nothing is written).
    pub fn write_next(&mut self, out: &mut [u8]) -> Option<usize> {
        let len = self.next_len()?;
        let out = out.get_mut(..len)?;
        match self.cut {
            Cut::Whole(csum) => {
                out.copy_from_slice(self.packet);
                if let Some((start, field)) = csum {
                    // The field holds the pseudo-header's sum: summing from `start` over the
                    // field completes it.
                    let mut sum = Checksum(0);
                    sum.add(&out[start..]);
                    // A complete checksum of 0 goes as 0xffff, the same in one's complement:
                    // in UDP over IPv6, 0 means none and the receiver drops the datagram
                    // (RFC 8200 section 8.1).
                    let csum = match sum.finish() {
                        0 => 0xffff,
                        c => c,
                    };
                    out[field..field + 2].copy_from_slice(&csum.to_be_bytes());
                }
                self.done = true;
            }
            Cut::Tcp { tcp, hdr, ecn, .. } => {
                let payload = &self.packet[hdr + self.at..][..len - hdr];
                let last = self.at + payload.len() >= self.packet.len() - hdr;
                out[..hdr].copy_from_slice(&self.packet[..hdr]);
                out[hdr..].copy_from_slice(payload);
                // IPv6 payload length: the headers were checked, the segment fits.
                out[4..6].copy_from_slice(&((len - IPV6_HEADER) as u16).to_be_bytes());
                let seq = seq_at(out, tcp).wrapping_add(self.at as u32);
                out[tcp + 4..tcp + 8].copy_from_slice(&seq.to_be_bytes());
                let flags = &mut out[tcp + 13];
                if !last {
                    *flags &= !(TCP_FIN | TCP_PSH);
                }
                if self.index > 0 && ecn {
                    *flags &= !TCP_CWR;
                }
                write_tcp_checksum(out, tcp);
                self.at += payload.len();
                self.done = last;
            }
        }
        self.index += 1;
        Some(len)
    }
}

/// Headers length of an IPv6 packet carrying TCP directly (no extension headers) whose
/// headers are all present; `None` for anything else.
fn tcp6_header_len(p: &[u8]) -> Option<usize> {
    match tcp6_headers(p)? {
        (IPV6_HEADER, hdr) => Some(hdr),
        _ => None,
    }
}

/// Where the TCP header of an IPv6 packet starts and where its headers end, when TCP follows
/// the IPv6 header directly or after hop-by-hop (first only) and destination options headers,
/// and all of them are present; `None` for anything else.
fn tcp6_headers(p: &[u8]) -> Option<(usize, usize)> {
    if p.len() < IPV6_HEADER || p[0] >> 4 != 6 {
        return None;
    }
    // The IPv6 payload length must describe exactly what is there.
    if usize::from(u16::from_be_bytes([p[4], p[5]])) != p.len() - IPV6_HEADER {
        return None;
    }
    let (mut next, mut at) = (p[6], IPV6_HEADER);
    for i in 0..=MAX_EXTENSION_HEADERS {
        match next {
            NEXT_HEADER_TCP => {
                let tcp = usize::from(*p.get(at + 12)? >> 4) * 4;
                return (tcp >= TCP_MIN_HEADER && at + tcp <= p.len()).then_some((at, at + tcp));
            }
            NEXT_HEADER_DEST_OPTS if i < MAX_EXTENSION_HEADERS => {}
            NEXT_HEADER_HOP_BY_HOP if i == 0 => {}
            _ => return None,
        }
        // Next header, then the length in 8-byte units after the first 8.
        let (&n, &units) = (p.get(at)?, p.get(at + 1)?);
        next = n;
        at += 8 + usize::from(units) * 8;
    }
    None
}

fn addresses(p: &[u8]) -> (Ipv6Addr, Ipv6Addr) {
    let mut s = [0; 16];
    let mut d = [0; 16];
    s.copy_from_slice(&p[8..24]);
    d.copy_from_slice(&p[24..40]);
    (Ipv6Addr::from(s), Ipv6Addr::from(d))
}

/// Computes and writes the full TCP checksum of an IPv6/TCP packet (no extension headers).
#[cfg(test)]
fn write_tcp6_checksum(p: &mut [u8]) {
    write_tcp_checksum(p, IPV6_HEADER);
}

/// Computes and writes the full TCP checksum of an IPv6 packet whose TCP header starts at
/// `tcp` (checked by the caller).
fn write_tcp_checksum(p: &mut [u8], tcp: usize) {
    let (src, dst) = addresses(p);
    let field = tcp + TCP_CSUM;
    p[field..field + 2].copy_from_slice(&[0, 0]);
    let mut sum = Checksum::pseudo_header_for(src, dst, p.len() - tcp, NEXT_HEADER_TCP);
    sum.add(&p[tcp..]);
    p[field..field + 2].copy_from_slice(&sum.finish().to_be_bytes());
}

/// Whether the full checksum of an IPv6/TCP packet (no extension headers) is right.
pub fn tcp6_checksum_ok(p: &[u8]) -> bool {
    if tcp6_header_len(p).is_none() {
        return false;
    }
    let (src, dst) = addresses(p);
    let mut sum = Checksum::pseudo_header_for(src, dst, p.len() - IPV6_HEADER, NEXT_HEADER_TCP);
    sum.add(&p[IPV6_HEADER..]);
    sum.finish() == 0
}

/// A run of consecutive segments of one TCP flow, to be written to the device as one
/// super-packet: the first packet's headers (rewritten by [`TcpMerge::headers`]) followed by
/// every segment's payload. Feed packets in delivery order with [`TcpMerge::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpMerge {
    /// Headers length (IPv6 and TCP) of every segment.
    hdr: usize,
    /// Payload length of every segment but possibly the last.
    mss: usize,
    /// Payload bytes so far.
    payload: usize,
    /// Segments so far.
    segments: usize,
    /// Sequence number the next segment must start at.
    next_seq: u32,
    /// Whether the last segment carried PSH (which ends the run).
    psh: bool,
}

/// Largest IPv6 payload a super-packet may carry.
const MAX_MERGED: usize = u16::MAX as usize;

/// Most segments in one run: it is written as one vector of the headers and every segment's
/// payload, and a vectored write takes at most 1,024 (`IOV_MAX`). A run of full-sized segments
/// ends near 48 at the 64 KiB limit; this bounds runs of small ones.
pub const MAX_SEGMENTS: usize = 64;

impl TcpMerge {
    /// Starts a run with `first`, if it is a TCP/IPv6 segment that can head one (ACK set, no
    /// SYN, FIN, RST, URG or CWR, payload, and a right checksum: the run goes to the device
    /// with a partial checksum, which the host takes as checked).
    pub fn start(first: &[u8]) -> Option<Self> {
        let hdr = tcp6_header_len(first)?;
        let flags = first[IPV6_HEADER + 13];
        let payload = first.len() - hdr;
        if flags & !TCP_PSH != TCP_ACK || payload == 0 || !tcp6_checksum_ok(first) {
            return None;
        }
        Some(Self {
            hdr,
            mss: payload,
            payload,
            segments: 1,
            next_seq: seq(first).wrapping_add(payload as u32),
            psh: flags & TCP_PSH != 0,
        })
    }

    /// Adds `next` to the run if it continues it: same addresses, traffic class, flow label
    /// and hop limit; same ports, acknowledgment, window and options; starts where the run
    /// ends; the run's segments so far are all `mss` long and `next` is no longer; flags ACK,
    /// or ACK and PSH (which ends the run); its checksum right; fewer than [`MAX_SEGMENTS`]
    /// so far. `first` is the run's first packet.
    pub fn push(&mut self, first: &[u8], next: &[u8]) -> bool {
        let Some(hdr) = tcp6_header_len(next) else {
            return false;
        };
        let payload = next.len() - hdr;
        let flags = next[IPV6_HEADER + 13];
        let fits = !self.psh
            && self.segments < MAX_SEGMENTS
            && hdr == self.hdr
            && payload > 0
            && payload <= self.mss
            && self.payload == self.mss * self.segments
            && self.hdr - IPV6_HEADER + self.payload + payload <= MAX_MERGED
            && flags & !TCP_PSH == TCP_ACK
            && first[..4] == next[..4]
            && first[6..IPV6_HEADER] == next[6..IPV6_HEADER]
            // ports, then acknowledgment, data offset and flags but PSH, window, options
            && first[IPV6_HEADER..IPV6_HEADER + 4] == next[IPV6_HEADER..IPV6_HEADER + 4]
            && first[IPV6_HEADER + 8..IPV6_HEADER + 13] == next[IPV6_HEADER + 8..IPV6_HEADER + 13]
            && first[IPV6_HEADER + 14..IPV6_HEADER + 16] == next[IPV6_HEADER + 14..IPV6_HEADER + 16]
            && first[IPV6_HEADER + 20..hdr] == next[IPV6_HEADER + 20..hdr]
            && seq(next) == self.next_seq
            && tcp6_checksum_ok(next);
        if fits {
            self.payload += payload;
            self.segments += 1;
            self.next_seq = self.next_seq.wrapping_add(payload as u32);
            self.psh = flags & TCP_PSH != 0;
        }
        fits
    }

    /// Segments in the run.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// The payload of segment `p` (any packet of the run).
    pub fn payload<'p>(&self, p: &'p [u8]) -> &'p [u8] {
        &p[self.hdr.min(p.len())..]
    }

    /// The virtio-net header and the IPv6 and TCP headers that go before the run's payloads,
    /// built from the run's `first` packet: the whole length, PSH if the last segment had it,
    /// and the partial checksum the kernel completes per segment. A run of one segment is a
    /// plain packet: write it as it is, after a zero [`VnetHdr`].
    pub fn headers(&self, first: &[u8], out: &mut [u8; VNET_HDR_LEN + 120]) -> usize {
        let vnet = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: self.hdr as u16,
            gso_size: self.mss as u16,
            csum_start: IPV6_HEADER as u16,
            csum_offset: TCP_CSUM as u16,
        };
        out[..VNET_HDR_LEN].copy_from_slice(&vnet.encode());
        let h = &mut out[VNET_HDR_LEN..VNET_HDR_LEN + self.hdr];
        h.copy_from_slice(&first[..self.hdr]);
        let tcp_len = self.hdr - IPV6_HEADER + self.payload;
        // At most MAX_MERGED, checked by `push`.
        h[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        if self.psh {
            h[IPV6_HEADER + 13] |= TCP_PSH;
        }
        let (src, dst) = addresses(h);
        let partial = Checksum::pseudo_header_for(src, dst, tcp_len, NEXT_HEADER_TCP).folded();
        h[IPV6_HEADER + TCP_CSUM..IPV6_HEADER + TCP_CSUM + 2]
            .copy_from_slice(&partial.to_be_bytes());
        VNET_HDR_LEN + self.hdr
    }
}

fn seq(p: &[u8]) -> u32 {
    seq_at(p, IPV6_HEADER)
}

/// The sequence number of the TCP header at `tcp`.
fn seq_at(p: &[u8], tcp: usize) -> u32 {
    u32::from_be_bytes([p[tcp + 4], p[tcp + 5], p[tcp + 6], p[tcp + 7]])
}

#[cfg(test)]
mod tests {
    use alloc::vec;
    use alloc::vec::Vec;

    use super::*;

    const SRC: [u8; 16] = [4, 0xa9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const DST: [u8; 16] = [5, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    /// A TCP/IPv6 packet with a 12-byte timestamp option, checksum complete.
    fn tcp(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let tcp_len = 32 + payload.len();
        let mut p = vec![0u8; IPV6_HEADER + tcp_len];
        p[0] = 0x60;
        p[1] = 0x0a; // traffic class / flow label bits
        p[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        p[6] = NEXT_HEADER_TCP;
        p[7] = 63;
        p[8..24].copy_from_slice(&SRC);
        p[24..40].copy_from_slice(&DST);
        let t = &mut p[IPV6_HEADER..];
        t[0..2].copy_from_slice(&5201u16.to_be_bytes());
        t[2..4].copy_from_slice(&40000u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&77u32.to_be_bytes());
        t[12] = 8 << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7]);
        t[32..].copy_from_slice(payload);
        write_tcp6_checksum(&mut p);
        p
    }

    fn all(segs: &mut Segments<'_>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(n) = segs.next_len() {
            let mut b = vec![0u8; n];
            assert_eq!(segs.write_next(&mut b), Some(n));
            out.push(b);
        }
        out
    }

    /// A super-packet as the kernel hands it over: one header, the whole payload, and the
    /// pseudo-header's partial sum in the checksum field.
    fn super_packet(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = tcp(seq, flags, payload);
        let (src, dst) = addresses(&p);
        let partial =
            Checksum::pseudo_header_for(src, dst, p.len() - IPV6_HEADER, NEXT_HEADER_TCP).folded();
        p[IPV6_HEADER + 16..IPV6_HEADER + 18].copy_from_slice(&partial.to_be_bytes());
        p
    }

    #[test]
    fn vnet_header_round_trips_little_endian() {
        let h = VnetHdr {
            flags: 1,
            gso_type: GSO_TCPV6,
            hdr_len: 72,
            gso_size: 1328,
            csum_start: 40,
            csum_offset: 16,
        };
        let b = h.encode();
        assert_eq!(b, [1, 4, 72, 0, 0x30, 0x05, 40, 0, 16, 0]);
        assert_eq!(VnetHdr::decode(&b), Ok(h));
        assert!(VnetHdr::decode(&b[..9]).is_err());
    }

    #[test]
    fn super_packet_is_cut_into_segments_that_are_each_valid() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let sp = super_packet(1000, TCP_ACK | TCP_PSH | TCP_FIN, &payload);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: 72,
            gso_size: 1328,
            csum_start: 40,
            csum_offset: 16,
        };
        let segs = all(&mut Segments::new(hdr, &sp).unwrap());
        assert_eq!(
            segs.iter().map(Vec::len).collect::<Vec<_>>(),
            [72 + 1328, 72 + 1328, 72 + 344]
        );
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(tcp6_checksum_ok(s), "segment {i} checksum");
            assert_eq!(seq(s), 1000 + 1328 * i as u32);
            let last = i == 2;
            let want = match last {
                true => TCP_ACK | TCP_PSH | TCP_FIN,
                false => TCP_ACK,
            };
            assert_eq!(s[IPV6_HEADER + 13], want, "segment {i} flags");
            assert_eq!(&s[..4], &sp[..4]);
            assert_eq!(&s[6..40], &sp[6..40]);
            joined.extend_from_slice(&s[72..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn cwr_only_on_the_first_segment_with_ecn() {
        let sp = super_packet(5, TCP_ACK | TCP_CWR, &[9; 100]);
        let hdr = VnetHdr {
            gso_type: GSO_TCPV6 | GSO_ECN,
            gso_size: 40,
            ..VnetHdr::default()
        };
        let segs = all(&mut Segments::new(hdr, &sp).unwrap());
        let flags: Vec<u8> = segs.iter().map(|s| s[IPV6_HEADER + 13]).collect();
        assert_eq!(flags, [TCP_ACK | TCP_CWR, TCP_ACK, TCP_ACK]);
    }

    #[test]
    fn plain_packet_passes_and_partial_checksum_is_completed() {
        let p = tcp(1, TCP_ACK, b"hello");
        let plain = all(&mut Segments::new(VnetHdr::default(), &p).unwrap());
        assert_eq!(plain, std::slice::from_ref(&p));
        let sp = super_packet(1, TCP_ACK, b"hello");
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 40,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        assert_eq!(all(&mut Segments::new(hdr, &sp).unwrap()), [p]);
        // A bare segment (no payload) still comes out, once.
        let ack = super_packet(9, TCP_ACK, b"");
        let hdr = VnetHdr {
            gso_type: GSO_TCPV6,
            gso_size: 1000,
            ..VnetHdr::default()
        };
        let segs = all(&mut Segments::new(hdr, &ack).unwrap());
        assert_eq!(segs, [tcp(9, TCP_ACK, b"")]);
    }

    #[test]
    fn bad_offload_requests_are_refused() {
        let p = tcp(1, TCP_ACK, b"x");
        let csum_outside = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 60,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        assert!(Segments::new(csum_outside, &p).is_err());
        let zero_mss = VnetHdr {
            gso_type: GSO_TCPV6,
            ..VnetHdr::default()
        };
        assert!(Segments::new(zero_mss, &p).is_err());
        let udp = VnetHdr {
            gso_type: 5,
            gso_size: 100,
            ..VnetHdr::default()
        };
        assert!(Segments::new(udp, &p).is_err());
        let mut not_tcp = p.clone();
        not_tcp[6] = 17;
        let tso = VnetHdr {
            gso_type: GSO_TCPV6,
            gso_size: 100,
            ..VnetHdr::default()
        };
        assert!(Segments::new(tso, &not_tcp).is_err());
        assert!(Segments::new(tso, &p[..50]).is_err(), "truncated");
        // A short output buffer gets nothing.
        let mut s = Segments::new(VnetHdr::default(), &p).unwrap();
        assert_eq!(s.write_next(&mut [0; 10]), None);
    }

    /// Merges `packets` as the router does and cuts the result back as the kernel would.
    fn merge_then_cut(packets: &[Vec<u8>]) -> (usize, Vec<Vec<u8>>) {
        let mut m = TcpMerge::start(&packets[0]).unwrap();
        for p in &packets[1..] {
            assert!(m.push(&packets[0], p));
        }
        let mut head = [0u8; VNET_HDR_LEN + 120];
        let n = m.headers(&packets[0], &mut head);
        let vnet = VnetHdr::decode(&head).unwrap();
        let mut whole = head[VNET_HDR_LEN..n].to_vec();
        for p in packets {
            whole.extend_from_slice(m.payload(p));
        }
        let segs = all(&mut Segments::new(vnet, &whole).unwrap());
        (m.segments(), segs)
    }

    #[test]
    fn merged_run_cuts_back_into_the_same_segments() {
        let packets = [
            tcp(100, TCP_ACK, &[1; 1328]),
            tcp(1428, TCP_ACK, &[2; 1328]),
            tcp(2756, TCP_ACK | TCP_PSH, &[3; 500]),
        ];
        let (n, segs) = merge_then_cut(&packets);
        assert_eq!(n, 3);
        assert_eq!(segs, packets);
    }

    #[test]
    fn what_does_not_continue_a_run_is_refused() {
        let first = tcp(100, TCP_ACK, &[1; 100]);
        let m = TcpMerge::start(&first).unwrap();
        let refused = |next: Vec<u8>, why: &str| {
            let mut m2 = m;
            assert!(!m2.push(&first, &next), "{why}");
            assert_eq!(m2, m, "{why}: run unchanged");
        };
        refused(tcp(201, TCP_ACK, &[1; 100]), "sequence gap");
        refused(tcp(200, TCP_ACK, &[1; 101]), "longer than the first");
        refused(tcp(200, TCP_ACK | TCP_FIN, &[1; 10]), "FIN");
        refused(tcp(200, TCP_ACK, &[]), "no payload");
        let mut other_port = tcp(200, TCP_ACK, &[1; 10]);
        other_port[IPV6_HEADER] = 9;
        write_tcp6_checksum(&mut other_port);
        refused(other_port, "other flow");
        let mut other_ack = tcp(200, TCP_ACK, &[1; 10]);
        other_ack[IPV6_HEADER + 11] = 1;
        refused(other_ack, "other acknowledgment");
        let mut other_hop = tcp(200, TCP_ACK, &[1; 10]);
        other_hop[7] = 1;
        refused(other_hop, "other hop limit");
        let mut other_ts = tcp(200, TCP_ACK, &[1; 10]);
        other_ts[IPV6_HEADER + 31] = 8;
        refused(other_ts, "other options");
        // After a short segment or a PSH nothing more joins.
        let mut m3 = m;
        assert!(m3.push(&first, &tcp(200, TCP_ACK, &[1; 50])));
        assert!(
            !m3.push(&first, &tcp(250, TCP_ACK, &[1; 50])),
            "after a short one"
        );
        let mut m4 = m;
        assert!(m4.push(&first, &tcp(200, TCP_ACK | TCP_PSH, &[1; 100])));
        assert!(!m4.push(&first, &tcp(300, TCP_ACK, &[1; 100])), "after PSH");
        assert!(
            TcpMerge::start(&tcp(1, TCP_ACK | 0x02, &[1])).is_none(),
            "SYN"
        );
        assert!(TcpMerge::start(&tcp(1, TCP_ACK, &[])).is_none(), "bare ACK");
    }

    #[test]
    fn runs_stop_below_the_ipv6_payload_limit() {
        let first = tcp(0, TCP_ACK, &[0; 1400]);
        let mut m = TcpMerge::start(&first).unwrap();
        let mut seq = 1400u32;
        while m.push(&first, &tcp(seq, TCP_ACK, &[0; 1400])) {
            seq += 1400;
        }
        assert_eq!(m.segments(), (65535 - 32) / 1400);
    }

    #[test]
    fn a_complete_checksum_of_zero_goes_as_ffff() {
        // A UDP/IPv6 datagram as the kernel hands it over with F_NEEDS_CSUM (the
        // pseudo-header's sum in the field), one payload word chosen so that the whole sum
        // is 0xffff: its checksum is 0, which in UDP over IPv6 means "none" (dropped).
        let udp_len = 16;
        let mut p = vec![0u8; IPV6_HEADER + udp_len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        p[6] = 17;
        p[7] = 64;
        p[8..24].copy_from_slice(&SRC);
        p[24..40].copy_from_slice(&DST);
        p[40..42].copy_from_slice(&5353u16.to_be_bytes());
        p[42..44].copy_from_slice(&443u16.to_be_bytes());
        p[44..46].copy_from_slice(&(udp_len as u16).to_be_bytes());
        p[48..52].copy_from_slice(b"QUIC");
        let (src, dst) = addresses(&p);
        let mut sum = Checksum::pseudo_header_for(src, dst, udp_len, 17);
        sum.add(&p[IPV6_HEADER..]);
        let word = 0xffff - sum.folded();
        p[54..56].copy_from_slice(&word.to_be_bytes());
        let partial = Checksum::pseudo_header_for(src, dst, udp_len, 17).folded();
        p[46..48].copy_from_slice(&partial.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 40,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        let out = all(&mut Segments::new(hdr, &p).unwrap());
        assert_eq!(&out[0][46..48], &[0xff, 0xff]);
        // And it checks: the sum over everything, the field included, is all ones.
        let mut check = Checksum::pseudo_header_for(src, dst, udp_len, 17);
        check.add(&out[0][IPV6_HEADER..]);
        assert_eq!(check.finish(), 0);
    }

    #[test]
    fn a_segment_with_a_bad_checksum_is_not_merged() {
        // A merged run goes to the device with a partial checksum, which the host takes as
        // checked: a corrupt segment must go alone, for the host's TCP to drop.
        let first = tcp(100, TCP_ACK, &[1; 100]);
        let mut bad = tcp(200, TCP_ACK, &[2; 100]);
        bad[IPV6_HEADER + 40] ^= 0xff;
        let m = TcpMerge::start(&first).unwrap();
        let mut m2 = m;
        assert!(!m2.push(&first, &bad));
        assert_eq!(m2, m);
        assert!(TcpMerge::start(&bad).is_none(), "a corrupt first segment");
        assert!(
            m2.push(&first, &tcp(200, TCP_ACK, &[2; 100])),
            "the good one"
        );
    }

    #[test]
    fn a_run_of_small_segments_fits_one_vectored_write() {
        // 16-byte segments (an application writing small records with TCP_NODELAY): the run
        // is written as its headers and one slice per segment, at most IOV_MAX (1,024).
        let first = tcp(0, TCP_ACK, &[0; 16]);
        let mut m = TcpMerge::start(&first).unwrap();
        let mut seq = 16u32;
        while m.push(&first, &tcp(seq, TCP_ACK, &[0; 16])) {
            seq += 16;
        }
        assert_eq!(m.segments(), MAX_SEGMENTS);
        assert!(
            m.segments() < 1024,
            "headers and every payload in one write"
        );
    }

    /// `tcp(..)` with an 8-byte destination options header (PadN) before its TCP header.
    fn with_dest_opts(p: &[u8]) -> Vec<u8> {
        let mut out = p[..IPV6_HEADER].to_vec();
        out[6] = NEXT_HEADER_DEST_OPTS;
        out.extend_from_slice(&[NEXT_HEADER_TCP, 0, 1, 4, 0, 0, 0, 0]);
        out.extend_from_slice(&p[IPV6_HEADER..]);
        let len = (out.len() - IPV6_HEADER) as u16;
        out[4..6].copy_from_slice(&len.to_be_bytes());
        out
    }

    #[test]
    fn a_super_packet_with_destination_options_is_cut_with_them() {
        // A socket with IPV6_DSTOPTS: the device (TSO6) hands its bursts over whole.
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 3) as u8).collect();
        let sp = with_dest_opts(&super_packet(1000, TCP_ACK | TCP_PSH, &payload));
        let tso = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: 80,
            gso_size: 1328,
            csum_start: 48,
            csum_offset: 16,
        };
        let segs = all(&mut Segments::new(tso, &sp).unwrap());
        assert_eq!(segs.len(), 3);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            // Each is the plain segment with the same options header in front.
            let mut plain = s[..IPV6_HEADER].to_vec();
            plain[6] = NEXT_HEADER_TCP;
            plain.extend_from_slice(&s[IPV6_HEADER + 8..]);
            let len = (plain.len() - IPV6_HEADER) as u16;
            plain[4..6].copy_from_slice(&len.to_be_bytes());
            assert_eq!(
                &s[IPV6_HEADER..IPV6_HEADER + 8],
                &sp[IPV6_HEADER..IPV6_HEADER + 8]
            );
            assert!(tcp6_checksum_ok(&plain), "segment {i} checksum");
            assert_eq!(seq(&plain), 1000 + 1328 * i as u32);
            let psh = if i == 2 { TCP_PSH } else { 0 };
            assert_eq!(plain[IPV6_HEADER + 13], TCP_ACK | psh, "segment {i} flags");
            joined.extend_from_slice(&plain[72..]);
        }
        assert_eq!(joined, payload);
        // Routing headers, and hop-by-hop anywhere but first, are still refused.
        let mut routing = sp.clone();
        routing[6] = 43;
        assert!(Segments::new(tso, &routing).is_err());
        let mut late_hop_by_hop = with_dest_opts(&sp);
        late_hop_by_hop[IPV6_HEADER] = NEXT_HEADER_HOP_BY_HOP;
        assert!(Segments::new(tso, &late_hop_by_hop).is_err());
        // An options header running past the packet.
        let mut long = with_dest_opts(&super_packet(1, TCP_ACK, &[5; 100]));
        long[IPV6_HEADER + 1] = 255;
        assert!(Segments::new(tso, &long).is_err());
        // Such a packet is not merged (it passes alone).
        assert!(TcpMerge::start(&with_dest_opts(&tcp(1, TCP_ACK, &[1; 10]))).is_none());
    }
}
