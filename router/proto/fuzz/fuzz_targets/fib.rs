//! The forwarding table against a naive model: any sequence of `FibChange`s (prefixes of any
//! length, /64 and shorter and longer, next hops, removals) staged on a `FibWriter` and
//! published at fuzzer-chosen points. After every publish, lookups through a `FibReader` of
//! entries' addresses and of fuzzer-chosen addresses equal a naive longest-prefix match over
//! the model map, and `len`, `get` and `iter` agree with it; the staged table's `len` and `get`
//! agree after every change. The last three snapshots are kept: a published table never
//! changes (the copy-on-write shards are not shared wrongly), checked at every publish and in
//! full at the end.
#![no_main]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use arbitrary::{Result, Unstructured};
use hyphae_proto::{Fib, FibChange, FibWriter, PeerId};
use hyphae_wire::Subnet;
use libfuzzer_sys::fuzz_target;

/// The model: (prefix length, masked address) → next hop.
type Model = BTreeMap<(u8, u128), PeerId>;

fn mask(plen: u8) -> u128 {
    match plen {
        0 => 0,
        l => u128::MAX << (128 - u32::from(l.min(128))),
    }
}

/// Longest-prefix match, naively: every prefix length present, longest first.
fn model_lookup(m: &Model, lens: &[u8], a: u128) -> Option<PeerId> {
    lens.iter()
        .find_map(|&plen| m.get(&(plen, a & mask(plen))))
        .copied()
}

/// The prefix lengths present in the model, longest first.
fn lengths(m: &Model) -> Vec<u8> {
    let mut v: Vec<u8> = m.keys().map(|k| k.0).collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v.dedup();
    v
}

/// A few base addresses, so that prefixes nest and collide often.
const BASES: [u128; 4] = [
    0x0400_0000_0000_0000_0000_0000_0000_0000,
    0x04aa_00bb_00cc_00dd_0000_0000_0000_0001,
    0x05ff_ffff_ffff_ffff_8000_0000_0000_0000,
    0x04aa_00bb_00cc_00de_ffff_ffff_ffff_ffff,
];

fn address(u: &mut Unstructured<'_>) -> Result<u128> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => u.arbitrary()?,
        // A base with some low bits changed: inside or just outside the nested prefixes.
        _ => {
            let base = BASES[usize::from(u.int_in_range(0u8..=3)?)];
            let bits = u.int_in_range(0u32..=127)?;
            let noise: u128 = u.arbitrary::<u64>()?.into();
            base ^ noise.rotate_left(bits)
        }
    })
}

fn prefix_len(u: &mut Unstructured<'_>) -> Result<u8> {
    Ok(match u.int_in_range(0u8..=5)? {
        0 | 1 => 64,
        2 => 128,
        3 => u.int_in_range(0u8..=64)?,
        4 => u.int_in_range(64u8..=128)?,
        _ => [0, 1, 7, 8, 63, 65, 127][usize::from(u.int_in_range(0u8..=6)?)],
    })
}

/// Checks `fib` against the model: `len`, `get` of every entry, lookups of the first and last
/// address of (a spread of) the entries and of the probes, and every entry `iter` yields.
fn check(fib: &Fib, m: &Model, probes: &[u128]) {
    let lens = lengths(m);
    assert_eq!(fib.len(), m.len(), "len");
    assert_eq!(fib.is_empty(), m.is_empty());
    {
        let mut seen = 0;
        for (s, p) in fib.iter() {
            let IpAddr::V6(a) = s.addr() else {
                panic!("IPv4 entry {s:?}")
            };
            let k = (s.prefix_len(), u128::from(a));
            assert_eq!(m.get(&k), Some(&p), "iter yields {s:?} -> {p:?}");
            seen += 1;
        }
        assert_eq!(seen, m.len(), "iter count");
    }
    // Every entry by `get`; lookups (one hash probe per prefix length) for a spread of at
    // most 32 entries, so that a long input stays fast.
    let stride = m.len().div_ceil(32).max(1);
    for (i, (&(plen, net), &p)) in m.iter().enumerate() {
        let s = Subnet::new(IpAddr::V6(Ipv6Addr::from(net)), plen).expect("valid");
        assert_eq!(fib.get(&s), Some(p), "get {s:?}");
        if i % stride != 0 {
            continue;
        }
        for a in [net, net | !mask(plen)] {
            assert_eq!(
                fib.lookup(Ipv6Addr::from(a)),
                model_lookup(m, &lens, a),
                "lookup {a:x}"
            );
        }
    }
    for &a in probes {
        assert_eq!(
            fib.lookup(Ipv6Addr::from(a)),
            model_lookup(m, &lens, a),
            "lookup {a:x}"
        );
        assert_eq!(
            fib.lookup_ip(IpAddr::V6(Ipv6Addr::from(a))),
            model_lookup(m, &lens, a)
        );
    }
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let seed: u64 = u.arbitrary()?;
    let mut w = FibWriter::new(seed);
    let r = w.reader();
    let mut staged = Model::new();
    let mut published = Model::new();
    // Older snapshots with the model they must still match.
    let mut old: Vec<(Arc<Fib>, Model)> = Vec::new();
    let mut probes: Vec<u128> = Vec::new();
    let mut dirty = false;
    let mut steps = 0;
    while !u.is_empty() && steps < 400 {
        steps += 1;
        match u.int_in_range(0u8..=9)? {
            0..=5 => {
                let plen = prefix_len(u)?;
                let a = address(u)?;
                let next_hop = match u.int_in_range(0u8..=3)? {
                    0 => None,
                    _ => Some(PeerId(u.int_in_range(0u64..=5)?)),
                };
                let subnet = Subnet::new(IpAddr::V6(Ipv6Addr::from(a)), plen).expect("valid");
                w.apply(FibChange { subnet, next_hop });
                let k = (plen, a & mask(plen));
                match next_hop {
                    Some(p) => staged.insert(k, p),
                    None => staged.remove(&k),
                };
                dirty = true;
                assert_eq!(w.staged().len(), staged.len(), "staged len");
                assert_eq!(w.staged().get(&subnet), next_hop, "staged get");
            }
            6 => {
                // IPv4 changes are ignored.
                let a: u32 = u.arbitrary()?;
                let plen = u.int_in_range(0u8..=32)?;
                let subnet = Subnet::new(IpAddr::V4(Ipv4Addr::from(a)), plen).expect("valid");
                let next_hop = Some(PeerId(1)).filter(|_| plen % 2 == 0);
                w.apply(FibChange { subnet, next_hop });
                dirty = true;
                assert_eq!(w.staged().len(), staged.len(), "IPv4 ignored");
                assert_eq!(w.staged().get(&subnet), None);
            }
            7 => {
                if probes.len() < 16 {
                    probes.push(address(u)?);
                }
            }
            _ => {
                let before = r.snapshot();
                assert_eq!(w.publish(), dirty, "publish reports a change");
                dirty = false;
                if old.len() == 3 {
                    old.remove(0);
                }
                old.push((before, published.clone()));
                published = staged.clone();
                check(&r.snapshot(), &published, &probes);
                // Older snapshots: unchanged (fully re-checked at the end).
                for (snap, m) in &old {
                    assert_eq!(snap.len(), m.len(), "an old snapshot changed");
                    let lens = lengths(m);
                    for &a in &probes {
                        assert_eq!(snap.lookup(Ipv6Addr::from(a)), model_lookup(m, &lens, a));
                    }
                }
            }
        }
    }
    check(w.staged(), &staged, &probes);
    w.publish();
    check(&r.snapshot(), &staged, &probes);
    for (snap, m) in &old {
        check(snap, m, &probes);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
