//! Reading TCP streams out of a classic libpcap file (not pcapng), enough to decode a captured
//! peer link: Ethernet (with 802.1Q tags), raw IP, Linux cooked (SLL, SLL2) and BSD loopback
//! link types; IPv4 (unfragmented) and IPv6 (no extension headers); each TCP direction
//! reassembled by sequence number. Duplicates and overlaps are handled; a gap ends the stream
//! there (the bytes after it cannot be framed).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Result, bail};

/// One direction of a TCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// The bytes, in order, up to the first gap.
    pub data: Vec<u8>,
    /// Whether a gap (a segment missing from the capture) cut the stream short.
    pub gap: bool,
}

#[derive(Debug)]
struct Segments {
    src: SocketAddr,
    dst: SocketAddr,
    syn: Option<u32>,
    segs: Vec<(u32, Vec<u8>)>,
}

/// Every TCP direction that carries data, in order of first appearance.
pub fn tcp_streams(file: &[u8]) -> Result<Vec<Stream>> {
    if file.len() < 24 {
        bail!("not a pcap file: too short");
    }
    let magic = [file[0], file[1], file[2], file[3]];
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        [0x0a, 0x0d, 0x0d, 0x0a] => {
            bail!("pcapng is not supported: convert with 'editcap -F pcap IN OUT'")
        }
        _ => bail!("not a pcap file (magic {:02x?})", magic),
    };
    let u32_at = |b: &[u8], i: usize| {
        let a = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let linktype = u32_at(file, 20) & 0x0fff_ffff;
    let mut conns: Vec<Segments> = Vec::new();
    let mut pos = 24;
    while pos < file.len() {
        if file.len() - pos < 16 {
            bail!("pcap record header cut short at byte {pos}");
        }
        let incl = u32_at(file, pos + 8) as usize;
        pos += 16;
        if file.len() - pos < incl {
            bail!("pcap record cut short at byte {pos}");
        }
        let pkt = &file[pos..pos + incl];
        pos += incl;
        let Some(ip) = link_payload(linktype, pkt)? else {
            continue;
        };
        let Some((src, dst, tcp)) = ip_tcp(ip) else {
            continue;
        };
        let Some((sport, dport, seq, flags, payload)) = tcp_segment(tcp) else {
            continue;
        };
        let (src, dst) = (SocketAddr::new(src, sport), SocketAddr::new(dst, dport));
        let i = match conns.iter().position(|c| c.src == src && c.dst == dst) {
            Some(i) => i,
            None => {
                conns.push(Segments {
                    src,
                    dst,
                    syn: None,
                    segs: Vec::new(),
                });
                conns.len() - 1
            }
        };
        let c = &mut conns[i];
        if flags & 0x02 != 0 {
            c.syn = Some(seq);
        }
        if !payload.is_empty() {
            // Data on a SYN starts one past its sequence number.
            let seq = if flags & 0x02 != 0 {
                seq.wrapping_add(1)
            } else {
                seq
            };
            c.segs.push((seq, payload.to_vec()));
        }
    }
    Ok(conns
        .into_iter()
        .filter(|c| !c.segs.is_empty())
        .map(reassemble)
        .collect())
}

fn reassemble(mut c: Segments) -> Stream {
    // Without the SYN, the stream starts at the first segment captured.
    let base = c.syn.map_or(c.segs[0].0, |s| s.wrapping_add(1));
    let rel = |seq: u32| seq.wrapping_sub(base) as i32;
    c.segs
        .retain(|(s, p)| rel(*s) >= 0 || rel(*s) + p.len() as i32 > 0);
    c.segs.sort_by_key(|(s, _)| rel(*s));
    let mut data = Vec::new();
    let mut gap = false;
    for (seq, p) in &c.segs {
        let (start, next) = (rel(*seq) as i64, data.len() as i64);
        let end = start + p.len() as i64;
        if end <= next {
            continue; // a retransmission of bytes we have
        }
        if start > next {
            gap = true;
            break;
        }
        data.extend_from_slice(&p[(next - start) as usize..]);
    }
    Stream {
        src: c.src,
        dst: c.dst,
        data,
        gap,
    }
}

/// The IP packet inside one link-layer frame, or `None` for anything else.
fn link_payload(linktype: u32, pkt: &[u8]) -> Result<Option<&[u8]>> {
    Ok(match linktype {
        // Ethernet, skipping VLAN tags.
        1 => {
            let mut off = 12;
            loop {
                if pkt.len() < off + 2 {
                    break None;
                }
                let t = u16::from_be_bytes([pkt[off], pkt[off + 1]]);
                if matches!(t, 0x8100 | 0x88a8) {
                    off += 4;
                    continue;
                }
                break ethertype_ip(t, &pkt[off + 2..]);
            }
        }
        // Raw IP (101, and 12 on some systems), IPv4 (228), IPv6 (229).
        12 | 14 | 101 | 228 | 229 => Some(pkt),
        // BSD loopback / OpenBSD loop: a 4-byte address family, then IP.
        0 | 108 => pkt.get(4..),
        // Linux cooked capture v1 (protocol at 14, header 16) and v2 (protocol at 0, header 20).
        113 if pkt.len() >= 16 => ethertype_ip(u16::from_be_bytes([pkt[14], pkt[15]]), &pkt[16..]),
        276 if pkt.len() >= 20 => ethertype_ip(u16::from_be_bytes([pkt[0], pkt[1]]), &pkt[20..]),
        113 | 276 => None,
        other => {
            bail!("unsupported pcap link type {other} (Ethernet, raw IP, SLL and loopback are)")
        }
    })
}

fn ethertype_ip(t: u16, rest: &[u8]) -> Option<&[u8]> {
    match t {
        0x0800 | 0x86dd => Some(rest),
        _ => None,
    }
}

/// Source, destination and TCP segment of an IPv4 or IPv6 packet carrying TCP.
fn ip_tcp(ip: &[u8]) -> Option<(IpAddr, IpAddr, &[u8])> {
    match ip.first()? >> 4 {
        4 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
            // Fragments (MF set or a non-zero offset) are not reassembled.
            if ip.get(9)? != &6 || frag & 0x3fff != 0 || ihl < 20 || total < ihl {
                return None;
            }
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(12..16)?).ok()?);
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(16..20)?).ok()?);
            let end = total.min(ip.len());
            Some((src.into(), dst.into(), ip.get(ihl..end)?))
        }
        6 => {
            let plen = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            if ip.get(6)? != &6 {
                return None;
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(8..24)?).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(24..40)?).ok()?);
            let end = (40 + plen).min(ip.len());
            Some((src.into(), dst.into(), ip.get(40..end)?))
        }
        _ => None,
    }
}

/// Ports, sequence number, flags and payload of a TCP segment.
fn tcp_segment(t: &[u8]) -> Option<(u16, u16, u32, u8, &[u8])> {
    let sport = u16::from_be_bytes([*t.first()?, *t.get(1)?]);
    let dport = u16::from_be_bytes([*t.get(2)?, *t.get(3)?]);
    let seq = u32::from_be_bytes(t.get(4..8)?.try_into().ok()?);
    let doff = usize::from(t.get(12)? >> 4) * 4;
    let flags = *t.get(13)?;
    if doff < 20 {
        return None;
    }
    Some((sport, dport, seq, flags, t.get(doff..)?))
}
