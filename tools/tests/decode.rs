//! `hyphae decode` on the golden frames captured from mycelium 0.7.10 (A<->B over TCP): as hex
//! and as pcap captures built here from those frames, with and without keys.

mod common;

use std::net::IpAddr;
use std::path::PathBuf;

use common::{hyphae, hyphae_stdin, scratch};
use serde_json::Value;

fn vectors(file: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../wire/tests/vectors/mycelium-0.7.10")
        .join(file);
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn frames(direction: &str) -> Vec<Value> {
    vectors("frames.json")
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["direction"] == direction)
        .cloned()
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn stream(direction: &str) -> Vec<u8> {
    frames(direction)
        .iter()
        .flat_map(|f| unhex(f["hex"].as_str().unwrap()))
        .collect()
}

/// Writes node `n`'s secret as a key file.
fn key_file(n: &str) -> PathBuf {
    let keys = vectors("keys.json");
    let p = scratch("keys").join(format!("{n}.key"));
    std::fs::write(&p, unhex(keys[n]["secret_key"].as_str().unwrap())).unwrap();
    p
}

fn pubkey(n: &str) -> String {
    vectors("keys.json")[n]["public_key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The frame lines (and their indented detail lines) of one `== label` section.
fn section(out: &str, label: &str) -> Vec<Vec<String>> {
    let mut lines = out
        .lines()
        .skip_while(|l| !l.starts_with(&format!("== {label}")));
    lines.next().expect("the section is there");
    let mut frames: Vec<Vec<String>> = Vec::new();
    for l in lines.take_while(|l| !l.starts_with("== ")) {
        if l.starts_with('#') {
            frames.push(vec![l.to_owned()]);
        } else if l.starts_with("    ") {
            frames.last_mut().unwrap().push(l.trim().to_owned());
        }
    }
    frames
}

/// Checks each decoded frame against the vector's fields; with `opened`, that every data
/// frame was opened and its message packet shown.
fn check(decoded: &[Vec<String>], expected: &[Value], opened: bool) {
    assert_eq!(decoded.len(), expected.len(), "{decoded:#?}");
    let mut offset = 0;
    for (i, (d, f)) in decoded.iter().zip(expected).enumerate() {
        let kind = f["kind"].as_str().unwrap();
        assert!(
            d[0].starts_with(&format!("#{i} @{offset} {kind} ")),
            "frame {i}: {d:?} vs {f}"
        );
        offset += f["hex"].as_str().unwrap().len() / 2;
        match kind {
            "data" => {
                for field in ["src", "dst"] {
                    let a: IpAddr = f[field].as_str().unwrap().parse().unwrap();
                    assert!(d[0].contains(&format!("{field}={a} ")), "{d:?}");
                }
                assert!(d[0].contains(&format!("hop_limit={} len={}", f["hop_limit"], f["len"])));
                if !opened {
                    continue;
                }
                let plain = f["plaintext"].as_str().unwrap().len() / 2;
                assert_eq!(
                    d[1],
                    format!("opened kind=MESSAGE payload_len={}", plain - 4),
                    "frame {i}"
                );
                let m = &f["message"];
                let want = format!(
                    "message id={} flags={}",
                    m["id"].as_str().unwrap(),
                    m["flags"].as_str().unwrap()
                );
                assert!(d[2].starts_with(&want), "frame {i}: {:?} vs {want}", d[2]);
            }
            "update" => {
                assert!(d[0].contains(&format!(
                    "subnet={} metric={}",
                    f["prefix"].as_str().unwrap(),
                    f["metric"]
                )));
                assert!(d[0].contains(f["router_id"].as_str().unwrap().get(..64).unwrap()));
            }
            "hello" => assert!(d[0].contains("interval=20.00s")),
            "ihu" => assert!(d[0].contains(&format!("rx_cost={} interval=60.00s", f["rx_cost"]))),
            "route_request" => {
                assert!(d[0].contains(&format!("prefix={}", f["prefix"].as_str().unwrap())))
            }
            other => panic!("unexpected kind {other}"),
        }
    }
}

#[test]
fn hex_without_a_key_shows_every_frame() {
    let hex: String = frames("a_to_b")
        .iter()
        .map(|f| f["hex"].as_str().unwrap().to_owned())
        .collect();
    let out = hyphae(&["decode", "--hex", &hex]);
    let text = out.ok();
    let decoded = section(text, "hex");
    check(&decoded, &frames("a_to_b"), false);
    assert!(
        text.ends_with("-- 17 frames (5 control, 12 data)\n"),
        "{text}"
    );
    // The same from standard input, with whitespace.
    let spaced: String = hex
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            (i % 64 == 63)
                .then_some('\n')
                .into_iter()
                .chain([c])
                .collect::<Vec<_>>()
        })
        .collect();
    let out = hyphae_stdin(&["decode"], Some(&spaced));
    assert_eq!(out.ok(), text);
}

#[test]
fn hex_with_keys_opens_data_frames_and_shows_messages() {
    let a = key_file("a");
    let hex: String = frames("a_to_b")
        .iter()
        .map(|f| f["hex"].as_str().unwrap().to_owned())
        .collect();
    // One direction alone does not carry the other nodes' keys: say so.
    let out = hyphae(&["decode", "-k", a.to_str().unwrap(), "--hex", &hex]);
    let decoded = section(out.ok(), "hex");
    assert_eq!(
        decoded[1][1],
        "sealed: no public key known for 4d4:2461:ba86:3cd4::/64 (give --peer-key)"
    );
    let (b, c) = (pubkey("b"), pubkey("c"));
    let out = hyphae(&[
        "decode",
        "-k",
        a.to_str().unwrap(),
        "--peer-key",
        &b,
        "--peer-key",
        &c,
        "--hex",
        &hex,
    ]);
    let text = out.ok();
    let decoded = section(text, "hex");
    check(&decoded, &frames("a_to_b"), true);
    // The 12-byte message on topic vector.topic, its chunk and its checksum.
    assert!(
        text.contains("flags=INIT total_len=12 topic=\"vector.topic\"\n"),
        "{text}"
    );
    assert!(
        text.contains("flags=CHUNK index=0 offset=0 size=12 data=\"hello from A\"\n"),
        "{text}"
    );
    assert!(
        text.contains("flags=DONE chunk_count=1 checksum="),
        "{text}"
    );
    // The 3000-byte message: three chunks.
    assert!(
        text.contains("flags=INIT total_len=3000 topic=\"\"\n"),
        "{text}"
    );
    assert!(
        text.contains("flags=CHUNK index=2 offset=2600 size=400 data="),
        "{text}"
    );
    // With B's key, frames between A and C are neither from nor to B.
    let bk = key_file("b");
    let out = hyphae(&[
        "decode",
        "-k",
        bk.to_str().unwrap(),
        "--peer-key",
        &pubkey("a"),
        "--hex",
        &hex,
    ]);
    let decoded = section(out.ok(), "hex");
    assert_eq!(decoded[1][1].split(' ').next(), Some("opened"));
    assert_eq!(decoded[9][1], "sealed: neither end is this key's node");
}

#[test]
fn bad_input_is_one_line_and_status_1() {
    let first = frames("a_to_b")[0]["hex"].as_str().unwrap().to_owned();
    // A frame with protocol version 9 after a good one: the good one is shown, then the error.
    let out = hyphae(&["decode", "--hex", &format!("{first}0901000000000000")]);
    assert!(out.stdout.contains("#0 @0 update "), "{out:?}");
    assert!(out.stdout.contains("corrupt framing at byte 68"), "{out:?}");
    assert_eq!(out.fails(1), "hyphae: 1 stream(s) hold corrupt framing");
    let out = hyphae(&["decode", "--hex", "01zz"]);
    assert!(out.fails(1).contains("invalid hex"), "{out:?}");
    let out = hyphae(&["decode", "--hex", &first, "--peer-key", "beef"]);
    assert!(
        out.fails(1).contains("invalid public key 'beef'"),
        "{out:?}"
    );
    let dir = scratch("badpcap");
    let p = dir.join("x.pcap");
    std::fs::write(&p, b"not a capture at all, not at all").unwrap();
    let out = hyphae(&["decode", "--pcap", p.to_str().unwrap()]);
    assert!(out.fails(1).contains("not a pcap file"), "{out:?}");
    // A truncated stream is not an error: the incomplete frame is reported.
    let out = hyphae(&["decode", "--hex", &first[..first.len() - 10]]);
    assert!(
        out.ok()
            .contains("0 frames (0 control, 0 data); 63 trailing bytes"),
        "{out:?}"
    );
}

// ---- pcap building ----

#[derive(Clone, Copy)]
enum Link {
    /// Ethernet II + IPv4.
    Ethernet4,
    /// Raw IPv6 (link type 101).
    Raw6,
}

struct Pcap {
    link: Link,
    out: Vec<u8>,
}

impl Pcap {
    fn new(link: Link) -> Self {
        let mut out = Vec::new();
        out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&65535u32.to_le_bytes());
        let lt: u32 = match link {
            Link::Ethernet4 => 1,
            Link::Raw6 => 101,
        };
        out.extend_from_slice(&lt.to_le_bytes());
        Self { link, out }
    }

    /// One TCP segment from `from` (0 = A at port 40000, 1 = B at port 9651).
    fn segment(&mut self, from: usize, seq: u32, flags: u8, payload: &[u8]) {
        let ports = [40000u16, 9651];
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&ports[from].to_be_bytes());
        tcp.extend_from_slice(&ports[1 - from].to_be_bytes());
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&0u32.to_be_bytes());
        tcp.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
        tcp.extend_from_slice(payload);
        let mut pkt = Vec::new();
        match self.link {
            Link::Ethernet4 => {
                pkt.extend_from_slice(&[2, 0, 0, 0, 0, 1 - from as u8, 2, 0, 0, 0, 0, from as u8]);
                pkt.extend_from_slice(&0x0800u16.to_be_bytes());
                let total = (20 + tcp.len()) as u16;
                pkt.extend_from_slice(&[0x45, 0]);
                pkt.extend_from_slice(&total.to_be_bytes());
                pkt.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
                pkt.extend_from_slice(&[127, 0, 0, 1 + from as u8]);
                pkt.extend_from_slice(&[127, 0, 0, 2 - from as u8]);
            }
            Link::Raw6 => {
                pkt.extend_from_slice(&[0x60, 0, 0, 0]);
                pkt.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
                pkt.extend_from_slice(&[6, 64]);
                let addr = |n: u8| {
                    let mut a = [0u8; 16];
                    a[..2].copy_from_slice(&[0xfd, 0]);
                    a[15] = n;
                    a
                };
                pkt.extend_from_slice(&addr(1 + from as u8));
                pkt.extend_from_slice(&addr(2 - from as u8));
            }
        }
        pkt.extend_from_slice(&tcp);
        self.out.extend_from_slice(&[0; 8]);
        self.out
            .extend_from_slice(&(pkt.len() as u32).to_le_bytes());
        self.out
            .extend_from_slice(&(pkt.len() as u32).to_le_bytes());
        self.out.extend_from_slice(&pkt);
    }
}

/// A capture of the A<->B link: handshake, then each direction's stream in segments of
/// `mss` bytes, interleaved, with one segment retransmitted and one pair out of order.
fn capture(link: Link, mss: usize) -> Vec<u8> {
    let mut p = Pcap::new(link);
    let isn = [1_000_000u32, u32::MAX - 500]; // B's sequence numbers wrap
    p.segment(0, isn[0], 0x02, &[]);
    p.segment(1, isn[1], 0x12, &[]);
    p.segment(0, isn[0] + 1, 0x10, &[]);
    let streams = [stream("a_to_b"), stream("b_to_a")];
    let mut segs: [Vec<(u32, Vec<u8>)>; 2] = Default::default();
    for d in 0..2 {
        for (i, c) in streams[d].chunks(mss).enumerate() {
            let seq = isn[d].wrapping_add(1).wrapping_add((i * mss) as u32);
            segs[d].push((seq, c.to_vec()));
        }
    }
    segs[1].swap(0, 1);
    let n = segs[0].len().max(segs[1].len());
    for i in 0..n {
        for (d, dir) in segs.iter().enumerate() {
            if let Some((seq, data)) = dir.get(i) {
                p.segment(d, *seq, 0x18, data);
                if d == 0 && i == 4 {
                    p.segment(d, *seq, 0x18, data); // a retransmission
                }
            }
        }
    }
    p.out
}

#[test]
fn pcap_of_the_link_decodes_both_directions_and_opens_everything_with_one_key() {
    for (link, mss, a_addr, b_addr) in [
        (Link::Ethernet4, 300, "127.0.0.1:40000", "127.0.0.2:9651"),
        (Link::Raw6, 1000, "[fd00::1]:40000", "[fd00::2]:9651"),
    ] {
        let dir = scratch("pcap");
        let f = dir.join("link.pcap");
        std::fs::write(&f, capture(link, mss)).unwrap();
        // No key: every frame of both directions, in order.
        let out = hyphae(&["decode", "--pcap", f.to_str().unwrap()]);
        let text = out.ok();
        let ab = section(text, &format!("{a_addr} -> {b_addr}"));
        let ba = section(text, &format!("{b_addr} -> {a_addr}"));
        check(&ab, &frames("a_to_b"), false);
        check(&ba, &frames("b_to_a"), false);
        // A's key: B's and C's public keys come from the Updates in the capture, and every data
        // frame opens (A<->B, A<->C across B).
        let k = key_file("a");
        let out = hyphae(&[
            "decode",
            "-k",
            k.to_str().unwrap(),
            "--pcap",
            f.to_str().unwrap(),
        ]);
        let text = out.ok();
        check(
            &section(text, &format!("{a_addr} -> {b_addr}")),
            &frames("a_to_b"),
            true,
        );
        check(
            &section(text, &format!("{b_addr} -> {a_addr}")),
            &frames("b_to_a"),
            true,
        );
        // C's message to A crossed B: hop limit 62, topic multi.hop.
        assert!(text.contains("hop_limit=62"), "{text}");
        assert!(text.contains("topic=\"multi.hop\""), "{text}");
    }
}

#[test]
fn pcap_with_a_missing_segment_stops_at_the_gap() {
    let mut p = Pcap::new(Link::Ethernet4);
    let s = stream("a_to_b");
    p.segment(0, 100, 0x18, &s[..68]); // the first Update
    p.segment(0, 100 + 68 + 10, 0x18, &s[78..200]); // 10 bytes missing
    let dir = scratch("gap");
    let f = dir.join("gap.pcap");
    std::fs::write(&f, p.out).unwrap();
    let out = hyphae(&["decode", "--pcap", f.to_str().unwrap()]);
    let text = out.ok();
    assert!(text.contains("#0 @0 update "), "{text}");
    assert!(
        text.contains("-- 1 frames (1 control, 0 data); the capture misses a segment"),
        "{text}"
    );
}
