//! `hyphae decode`: peer-link frames from hex or a pcap capture, one line per frame with its
//! fields. With a key file (`-k`), data frames to or from that node are opened and their
//! contents shown (message-subsystem packets field by field). The other node's public key comes
//! from `--peer-key` or from the Updates in the input (a router id holds the source's key).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Read;
use std::net::Ipv6Addr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use hyphae_wire::babel::Tlv;
use hyphae_wire::data::DataFrame;
use hyphae_wire::deframer::{Deframer, Frame};
use hyphae_wire::identity::{PublicKey, SecretKey, key_file};
use hyphae_wire::message::{MessageBody, MessagePacket};
use hyphae_wire::seal::{SealingKey, UserDataKind};

use crate::cli::{DecodeArgs, parse_pubkey};
use crate::pcap;

/// Runs `decode`.
pub fn run(a: &DecodeArgs, key_file: Option<&Path>) -> Result<()> {
    let secret = key_file.map(key_file::load).transpose()?;
    let mut peer_keys = a
        .peer_keys
        .iter()
        .map(|k| parse_pubkey(k))
        .collect::<Result<Vec<_>>>()?;
    let inputs = match (&a.hex, &a.pcap) {
        (Some(h), _) => vec![Input::hex(h)?],
        (None, Some(p)) => {
            let file = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            let streams =
                pcap::tcp_streams(&file).with_context(|| format!("cannot read {}", p.display()))?;
            if streams.is_empty() {
                bail!("{}: no TCP payload in the capture", p.display());
            }
            streams
                .into_iter()
                .map(|s| Input {
                    label: format!("{} -> {}", s.src, s.dst),
                    data: s.data,
                    gap: s.gap,
                })
                .collect()
        }
        (None, None) => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read hex from standard input")?;
            vec![Input::hex(&s)?]
        }
    };
    let decoded: Vec<Decoded> = inputs.into_iter().map(Decoded::new).collect();
    // Learn public keys from every router id in the input, so that frames seen before the
    // Update that names their source still open.
    for d in &decoded {
        for (_, f) in &d.frames {
            match f {
                Frame::Control(Tlv::Update(u)) => peer_keys.push(u.router_id.public_key()),
                Frame::Control(Tlv::SeqnoRequest(r)) => peer_keys.push(r.router_id.public_key()),
                _ => {}
            }
        }
    }
    let mut opener = secret.map(|s| Opener::new(s, &peer_keys));
    let mut out = String::new();
    let mut broken = 0;
    for d in &decoded {
        d.print(opener.as_mut(), &mut out);
        broken += usize::from(d.error.is_some());
    }
    print!("{out}");
    if broken > 0 {
        bail!("{broken} stream(s) hold corrupt framing");
    }
    Ok(())
}

#[derive(Debug)]
struct Input {
    label: String,
    data: Vec<u8>,
    gap: bool,
}

impl Input {
    fn hex(s: &str) -> Result<Self> {
        let s = s.trim();
        let s = s.strip_prefix("0x").unwrap_or(s);
        let digits: Vec<u8> = s
            .bytes()
            .filter(|b| !b.is_ascii_whitespace() && *b != b':')
            .collect();
        if !digits.len().is_multiple_of(2) {
            bail!("invalid hex: odd number of digits");
        }
        let val = |c: u8| char::from(c).to_digit(16);
        let mut data = Vec::with_capacity(digits.len() / 2);
        for (i, p) in digits.chunks_exact(2).enumerate() {
            match (val(p[0]), val(p[1])) {
                (Some(h), Some(l)) => data.push((h << 4 | l) as u8),
                _ => bail!("invalid hex: '{}' at byte {i}", String::from_utf8_lossy(p)),
            }
        }
        if data.is_empty() {
            bail!("nothing to decode: the hex input is empty");
        }
        Ok(Self {
            label: "hex".into(),
            data,
            gap: false,
        })
    }
}

/// One input cut into frames.
#[derive(Debug)]
struct Decoded {
    input: Input,
    frames: Vec<(usize, Frame<BytesMut>)>,
    trailing: usize,
    error: Option<(usize, String)>,
}

impl Decoded {
    fn new(input: Input) -> Self {
        let mut buf = BytesMut::from(input.data.as_slice());
        let mut deframer = Deframer::new();
        let mut frames = Vec::new();
        let mut offset = 0;
        let mut error = None;
        loop {
            let before = buf.len();
            match deframer.next_frame(&mut buf) {
                Ok(Some(f)) => {
                    frames.push((offset, f));
                    offset += before - buf.len();
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some((offset, e.to_string()));
                    break;
                }
            }
        }
        Self {
            trailing: buf.len(),
            input,
            frames,
            error,
        }
    }

    fn print(&self, mut opener: Option<&mut Opener>, out: &mut String) {
        let _ = writeln!(
            out,
            "== {}: {} bytes ==",
            self.input.label,
            self.input.data.len()
        );
        for (i, (off, f)) in self.frames.iter().enumerate() {
            let _ = write!(out, "#{i} @{off} ");
            match f {
                Frame::Control(t) => control(t, out),
                Frame::Skipped(s) => {
                    let _ = writeln!(
                        out,
                        "skipped tlv_type={:?} reason={:?}",
                        s.tlv_type, s.reason
                    );
                }
                Frame::Data(d) => data(d, opener.as_deref_mut(), out),
            }
        }
        let (data, control) = self.frames.iter().fold((0, 0), |(d, c), (_, f)| match f {
            Frame::Data(_) => (d + 1, c),
            _ => (d, c + 1),
        });
        let _ = write!(
            out,
            "-- {} frames ({control} control, {data} data)",
            self.frames.len()
        );
        if let Some((off, e)) = &self.error {
            let _ = write!(out, "; corrupt framing at byte {off}: {e}");
        } else if self.trailing > 0 {
            let _ = write!(
                out,
                "; {} trailing bytes (an incomplete frame)",
                self.trailing
            );
        }
        if self.input.gap {
            let _ = write!(out, "; the capture misses a segment, the rest is not shown");
        }
        out.push('\n');
    }
}

fn control(t: &Tlv, out: &mut String) {
    let _ = match t {
        Tlv::Hello(h) => writeln!(
            out,
            "hello flags={:#06x} seqno={} interval={}",
            h.flags, h.seqno, h.interval
        ),
        Tlv::Ihu(h) => writeln!(
            out,
            "ihu rx_cost={} interval={} address={}",
            h.rx_cost,
            h.interval,
            h.address.map_or_else(|| "-".into(), |a| a.to_string())
        ),
        Tlv::Update(u) => writeln!(
            out,
            "update subnet={} metric={} seqno={} interval={} flags={:#04x} router_id={}",
            u.subnet, u.metric, u.seqno, u.interval, u.flags, u.router_id
        ),
        Tlv::RouteRequest(r) => writeln!(
            out,
            "route_request prefix={} generation={}",
            r.prefix.map_or_else(|| "*".into(), |p| p.to_string()),
            r.generation
        ),
        Tlv::SeqnoRequest(r) => writeln!(
            out,
            "seqno_request prefix={} seqno={} hop_count={} router_id={}",
            r.prefix, r.seqno, r.hop_count, r.router_id
        ),
    };
}

fn data(d: &DataFrame<BytesMut>, opener: Option<&mut Opener>, out: &mut String) {
    let _ = writeln!(
        out,
        "data src={} dst={} hop_limit={} len={}",
        d.src(),
        d.dst(),
        d.hop_limit(),
        d.body_len()
    );
    let Some(opener) = opener else {
        return;
    };
    let Some(peer) = opener.peer_of(d.src(), d.dst()) else {
        let _ = writeln!(out, "    sealed: neither end is this key's node");
        return;
    };
    let Some(key) = opener.key_for(peer) else {
        let _ = writeln!(
            out,
            "    sealed: no public key known for {} (give --peer-key)",
            prefix64(peer)
        );
        return;
    };
    let mut body = d.body().to_vec();
    let (kind, payload) = match key.open(&mut body) {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(out, "    cannot open: {e}");
            return;
        }
    };
    let _ = writeln!(
        out,
        "    opened kind={kind:?} payload_len={}",
        payload.len()
    );
    match kind {
        UserDataKind::MESSAGE => message(payload, out),
        UserDataKind::L3 => l3(payload, out),
        UserDataKind::OOB_ICMP => {
            let _ = match <[u8; 16]>::try_from(payload.get(..16).unwrap_or_default()) {
                Ok(a) => writeln!(out, "    oob_icmp original_dst={}", Ipv6Addr::from(a)),
                Err(_) => writeln!(out, "    oob_icmp (too short)"),
            };
        }
        _ => {}
    }
}

fn message(payload: &[u8], out: &mut String) {
    let p = match MessagePacket::decode(payload) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(out, "    message: malformed: {e}");
            return;
        }
    };
    let _ = write!(out, "    message id={} flags={:?}", p.id, p.flags);
    let _ = match p.body {
        MessageBody::Init { total_len, topic } => {
            write!(out, " total_len={total_len} topic={}", shown(topic))
        }
        MessageBody::InitAck {
            total_len,
            topic_len,
        } => write!(out, " total_len={total_len} topic_len={topic_len}"),
        MessageBody::Chunk {
            index,
            offset,
            data,
        } => write!(
            out,
            " index={index} offset={offset} size={} data={}",
            data.len(),
            shown(data)
        ),
        MessageBody::ChunkAck {
            index,
            offset,
            size,
        } => write!(out, " index={index} offset={offset} size={size}"),
        MessageBody::Done {
            chunk_count,
            checksum,
        } => {
            let mut h = String::new();
            for b in checksum {
                let _ = write!(h, "{b:02x}");
            }
            write!(out, " chunk_count={chunk_count} checksum={h}")
        }
        MessageBody::Empty => Ok(()),
    };
    out.push('\n');
}

/// Bytes for a one-line display: quoted text if printable UTF-8 (cut at 48 characters), else
/// hex (cut at 32 bytes).
fn shown(b: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(b)
        && !s.chars().any(char::is_control)
    {
        let cut: String = s.chars().take(48).collect();
        let more = if cut.len() < s.len() { "..." } else { "" };
        return format!("{cut:?}{more}");
    }
    let mut h = String::from("0x");
    for x in b.iter().take(32) {
        let _ = write!(h, "{x:02x}");
    }
    if b.len() > 32 {
        h.push_str("...");
    }
    h
}

fn l3(p: &[u8], out: &mut String) {
    if p.len() < 40 || p[0] >> 4 != 6 {
        let _ = writeln!(out, "    l3: not an IPv6 packet ({} bytes)", p.len());
        return;
    }
    let addr = |r: std::ops::Range<usize>| {
        <[u8; 16]>::try_from(&p[r]).map_or(Ipv6Addr::UNSPECIFIED, Ipv6Addr::from)
    };
    let _ = writeln!(
        out,
        "    ipv6 src={} dst={} next_header={} payload_len={} hop_limit={}",
        addr(8..24),
        addr(24..40),
        p[6],
        u16::from_be_bytes([p[4], p[5]]),
        p[7]
    );
}

fn prefix64(a: Ipv6Addr) -> String {
    let mut o = a.octets();
    o[8..].fill(0);
    format!("{}/64", Ipv6Addr::from(o))
}

/// Opens data frames to and from one node.
#[derive(Debug)]
struct Opener {
    secret: SecretKey,
    own: [u8; 8],
    known: HashMap<[u8; 8], PublicKey>,
    keys: HashMap<[u8; 8], Option<SealingKey>>,
}

fn net(a: Ipv6Addr) -> [u8; 8] {
    let o = a.octets();
    [o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]]
}

impl Opener {
    fn new(secret: SecretKey, peers: &[PublicKey]) -> Self {
        let own = net(secret.public_key().address());
        let known = peers.iter().map(|pk| (net(pk.address()), *pk)).collect();
        Self {
            secret,
            own,
            known,
            keys: HashMap::new(),
        }
    }

    /// The other end, if one end of the frame is this node.
    fn peer_of(&self, src: Ipv6Addr, dst: Ipv6Addr) -> Option<Ipv6Addr> {
        match () {
            () if net(src) == self.own => Some(dst),
            () if net(dst) == self.own => Some(src),
            () => None,
        }
    }

    fn key_for(&mut self, peer: Ipv6Addr) -> Option<&SealingKey> {
        let n = net(peer);
        let (secret, known) = (&self.secret, &self.known);
        self.keys
            .entry(n)
            .or_insert_with(|| {
                known
                    .get(&n)
                    .map(|pk| SealingKey::new(&secret.shared_secret(pk)))
            })
            .as_ref()
    }
}
