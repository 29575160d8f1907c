//! One Babel `Router` under any input: up to four neighbours (and one unknown peer) that come
//! up, go down and send any Hello, IHU, Update, RouteRequest or SeqnoRequest; time that moves
//! by any amount and fires timers; the node asking for routes and using them. Updates are
//! built around a small pool of keys, so that most pass the ownership filter and routes pile
//! up against the (small) caps; the rest are arbitrary.
//!
//! Invariants, after every step:
//! * no panic;
//! * route entries ≤ `max_routes` in total and ≤ `max_routes_per_peer` per neighbour; the
//!   source table, the request caches and the query table within their caps; no more timers
//!   than the fixed ones plus one per neighbour, route entry and query;
//! * every selected route is for a subnet some neighbour announced (a finite Update for
//!   exactly that subnet), goes through a neighbour that is up, and has a finite metric;
//! * the forwarding-table changes the router emitted, replayed into a map, equal
//!   `selected_route()` for every subnet (and no change repeats the current next hop);
//! * every TLV it sends goes to a neighbour that was up, encodes and decodes to itself, and an
//!   Update for a foreign subnet carries a subnet some neighbour announced;
//! * at the end, with every neighbour gone and two idle hours, every table is empty again.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::{Result, Unstructured};
use bytes::BytesMut;
use hyphae_proto::babel::Config;
use hyphae_proto::{Event, LinkKind, PeerId, Router};
use hyphae_wire::babel::{Hello, Ihu, RouteRequest, SeqnoRequest, Tlv, Update};
use hyphae_wire::deframer::{Frame, decode_datagram};
use hyphae_wire::identity::PublicKey;
use hyphae_wire::{Interval, Metric, RouterId, SeqNo, Subnet};
use libfuzzer_sys::fuzz_target;

/// Key 0 is the router's own; neighbours announce subnets of keys 1.. (and sometimes 0).
const KEYS: usize = 6;
/// Neighbours are `PeerId(1..=NEIGHBOURS)`; `PeerId(NEIGHBOURS + 1)` is never up.
const NEIGHBOURS: u64 = 4;

struct Key {
    key: PublicKey,
    addr: Ipv6Addr,
}

fn keys() -> &'static [Key; KEYS] {
    static K: OnceLock<[Key; KEYS]> = OnceLock::new();
    K.get_or_init(|| {
        std::array::from_fn(|i| {
            let key = PublicKey::from([i as u8 + 1; 32]);
            Key {
                addr: key.address(),
                key,
            }
        })
    })
}

fn base() -> Instant {
    static B: OnceLock<Instant> = OnceLock::new();
    *B.get_or_init(Instant::now)
}

/// `FUZZ_TRACE=1` prints every step (to read a reproducer).
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

fn key_index(u: &mut Unstructured<'_>) -> Result<usize> {
    Ok(match u.ratio(1, 10)? {
        true => 0,
        false => usize::from(u.int_in_range(1u8..=KEYS as u8 - 1)?),
    })
}

fn subnet_of(u: &mut Unstructured<'_>, k: usize) -> Result<Subnet> {
    let addr = IpAddr::V6(keys()[k].addr);
    let s = match u.int_in_range(0u8..=9)? {
        0..=4 => Subnet::new(addr, 64),
        5..=7 => Subnet::new(addr, u.int_in_range(65u8..=128)?),
        8 => Subnet::new(addr, u.int_in_range(0u8..=63)?),
        _ => match u.ratio(1, 4)? {
            true => Subnet::new(
                IpAddr::V4(Ipv4Addr::from(u.arbitrary::<u32>()?)),
                u.int_in_range(0u8..=32)?,
            ),
            false => Subnet::new(
                IpAddr::V6(Ipv6Addr::from(u.arbitrary::<u128>()?)),
                u.int_in_range(0u8..=128)?,
            ),
        },
    };
    Ok(s.expect("valid prefix length"))
}

fn subnet(u: &mut Unstructured<'_>) -> Result<Subnet> {
    let k = key_index(u)?;
    subnet_of(u, k)
}

fn router_id(u: &mut Unstructured<'_>, k: usize) -> Result<RouterId> {
    let k = match u.ratio(1, 8)? {
        true => key_index(u)?,
        false => k,
    };
    let zone = u.int_in_range(0u16..=1)?;
    let r = u.int_in_range(0u8..=2)?;
    Ok(RouterId::new(&keys()[k].key, zone, [r; 6]))
}

fn seqno(u: &mut Unstructured<'_>) -> Result<SeqNo> {
    Ok(SeqNo(match u.int_in_range(0u8..=3)? {
        0 => 0,
        1 | 2 => u.int_in_range(0u16..=8)?,
        _ => u.arbitrary()?,
    }))
}

fn metric(u: &mut Unstructured<'_>) -> Result<Metric> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => Metric(0),
        1..=3 => Metric(u.int_in_range(0u16..=2000)?),
        4 => Metric::INFINITE,
        5 => Metric::MAX_FINITE,
        _ => Metric(u.arbitrary()?),
    })
}

fn interval(u: &mut Unstructured<'_>) -> Result<Interval> {
    Ok(Interval(match u.int_in_range(0u8..=3)? {
        0 => 0,
        1 => u.int_in_range(1u16..=500)?,
        2 => 30000,
        _ => u.arbitrary()?,
    }))
}

fn tlv(u: &mut Unstructured<'_>) -> Result<Tlv> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => Tlv::Hello(Hello {
            flags: u.arbitrary()?,
            seqno: seqno(u)?,
            interval: interval(u)?,
        }),
        1 => Tlv::Ihu(Ihu {
            rx_cost: metric(u)?,
            interval: interval(u)?,
            address: None,
        }),
        2..=6 => {
            let k = key_index(u)?;
            Tlv::Update(Update {
                flags: u.arbitrary()?,
                interval: interval(u)?,
                seqno: seqno(u)?,
                metric: metric(u)?,
                subnet: subnet_of(u, k)?,
                router_id: router_id(u, k)?,
            })
        }
        7 => Tlv::RouteRequest(RouteRequest {
            generation: match u.ratio(3, 4)? {
                true => u.int_in_range(0u8..=3)?,
                false => u.arbitrary()?,
            },
            prefix: match u.ratio(1, 4)? {
                true => None,
                false => Some(subnet(u)?),
            },
        }),
        _ => {
            let k = key_index(u)?;
            Tlv::SeqnoRequest(SeqnoRequest {
                seqno: seqno(u)?,
                hop_count: match u.ratio(3, 4)? {
                    true => u.int_in_range(0u8..=3)?,
                    false => u.arbitrary()?,
                },
                router_id: router_id(u, k)?,
                prefix: subnet_of(u, k)?,
            })
        }
    })
}

fn link_kind(u: &mut Unstructured<'_>) -> Result<LinkKind> {
    Ok(match u.int_in_range(0u8..=6)? {
        0 => LinkKind::TcpV6,
        1 => LinkKind::TcpV4,
        2 => LinkKind::QuicV6,
        3 => LinkKind::QuicV4,
        4 => LinkKind::Vsock,
        _ => LinkKind::Other(u.arbitrary()?),
    })
}

struct Harness {
    r: Router,
    cfg: Config,
    now: Instant,
    up: [bool; NEIGHBOURS as usize + 2],
    /// Subnets some neighbour sent a finite Update for.
    announced: HashSet<Subnet>,
    /// The forwarding table replayed from `poll_fib_change`.
    fib: HashMap<Subnet, PeerId>,
    tlvs: u64,
}

impl Harness {
    fn is_up(&self, p: PeerId) -> bool {
        self.up.get(p.0 as usize).copied().unwrap_or(false)
    }

    fn drain(&mut self) {
        let own = self.r.own_subnet();
        let mut n = 0;
        while let Some(t) = self.r.poll_transmit() {
            n += 1;
            assert!(n < 100_000, "transmits without end");
            if trace() {
                eprintln!("    tx {t:?}");
            }
            assert!(
                (1..=NEIGHBOURS).contains(&t.peer.0),
                "transmit to a peer that was never up: {:?}",
                t.peer
            );
            let mut b = BytesMut::new();
            t.tlv.encode_frame(&mut b);
            assert_eq!(b.len(), t.tlv.frame_len());
            match decode_datagram(&b[..]) {
                Ok(Frame::Control(back)) => assert_eq!(back, t.tlv, "TLV round trip"),
                other => panic!("router sent {:?}, decodes as {other:?}", t.tlv),
            }
            if let Tlv::Update(u) = t.tlv
                && !u.metric.is_infinite()
            {
                if u.subnet == own {
                    assert_eq!(u.router_id, self.r.router_id(), "own route, foreign id");
                } else {
                    assert!(
                        self.announced.contains(&u.subnet),
                        "advertises {:?}, which nobody announced",
                        u.subnet
                    );
                }
            }
        }
        while let Some(c) = self.r.poll_fib_change() {
            if trace() {
                eprintln!("    fib {c:?}");
            }
            let old = match c.next_hop {
                Some(p) => {
                    assert!(
                        self.is_up(p),
                        "FIB entry through a peer that is down: {p:?} {:?}",
                        self.up
                    );
                    self.fib.insert(c.subnet, p)
                }
                None => self.fib.remove(&c.subnet),
            };
            assert_ne!(old, c.next_hop, "FIB change that changes nothing");
        }
        while let Some(e) = self.r.poll_event() {
            if trace() {
                eprintln!("    event {e:?}");
            }
            match e {
                Event::PeerDead(p) => {
                    assert!(self.is_up(p), "dead peer that was not up");
                    self.up[p.0 as usize] = false;
                }
                Event::QueryTimedOut(_) => {}
                _ => {}
            }
        }
        self.check();
    }

    fn check(&self) {
        let cap = self.cfg.max_cache_entries.max(16);
        let (total, timers) = self.r.table_sizes();
        let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
        let mut selected = 0;
        let mut entries = 0;
        for v in self.r.routes() {
            entries += 1;
            *per_peer.entry(v.next_hop).or_default() += 1;
            if !v.selected {
                continue;
            }
            selected += 1;
            assert!(
                self.announced.contains(&v.subnet),
                "selected route to {:?}, which nobody announced",
                v.subnet
            );
            assert!(
                self.is_up(v.next_hop),
                "selected route through a peer that is down"
            );
            assert!(
                !v.metric.is_infinite(),
                "selected route with infinite metric"
            );
            assert_eq!(self.r.selected_route(&v.subnet), Some(v));
            assert_eq!(self.fib.get(&v.subnet), Some(&v.next_hop), "FIB disagrees");
        }
        assert_eq!(selected, self.fib.len(), "FIB has entries nothing selects");
        assert_eq!(entries, total, "table_sizes disagrees with routes()");
        assert!(total <= self.cfg.max_routes, "{total} routes > max_routes");
        for (p, n) in per_peer {
            assert!(
                n <= self.cfg.max_routes_per_peer,
                "{n} routes from {p:?} > max_routes_per_peer"
            );
        }
        let (sources, seqnos, rrs) = self.r.cache_sizes();
        assert!(sources <= 4 * cap, "source table {sources}");
        assert!(seqnos <= cap, "seqno cache {seqnos}");
        assert!(rrs <= cap, "route request cache {rrs}");
        let queried = self.r.queried().count();
        assert!(queried <= cap, "queries {queried}");
        let peers = self.r.peers().count();
        assert_eq!(
            peers,
            self.up.iter().filter(|u| **u).count(),
            "the router's neighbours differ from the links that are up"
        );
        for p in self.r.peers() {
            assert!(self.is_up(p.peer));
        }
        assert!(
            timers <= 4 + peers + total + queried,
            "{timers} timers for {peers} peers, {total} routes, {queried} queries"
        );
        assert_eq!(self.r.stats().tlvs, self.tlvs);
    }
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let now = base();
    let cfg = Config {
        hello_interval: Duration::from_millis(
            [100, 1000, 20_000][usize::from(u.int_in_range(0u8..=2)?)],
        ),
        dead_peer_threshold: match u.ratio(1, 4)? {
            true => Some(Duration::from_millis(u.int_in_range(0u64..=60_000)?)),
            false => None,
        },
        update_interval: Duration::from_secs([1, 30, 300][usize::from(u.int_in_range(0u8..=2)?)]),
        max_routes: [8, 64][usize::from(u.int_in_range(0u8..=1)?)],
        max_routes_per_peer: [4, 32][usize::from(u.int_in_range(0u8..=1)?)],
        max_cache_entries: [16, 64][usize::from(u.int_in_range(0u8..=1)?)],
        hash_seed: u.arbitrary()?,
    };
    let own = RouterId::new(&keys()[0].key, 0, [9; 6]);
    let mut h = Harness {
        r: Router::new(now, cfg.clone(), own),
        cfg,
        now,
        up: [false; NEIGHBOURS as usize + 2],
        announced: HashSet::new(),
        fib: HashMap::new(),
        tlvs: 0,
    };
    h.drain();
    let mut steps = 0u32;
    while !u.is_empty() && steps < 1000 {
        steps += 1;
        let peer = PeerId(u.int_in_range(1..=NEIGHBOURS)?);
        let now = h.now;
        match u.int_in_range(0u8..=15)? {
            0 | 1 => {
                let kind = link_kind(u)?;
                if trace() {
                    eprintln!("{:?} peer up {peer:?} {kind:?}", now - base());
                }
                h.r.handle_peer_up(now, peer, kind);
                h.up[peer.0 as usize] = true;
            }
            2 => {
                if trace() {
                    eprintln!("{:?} peer down {peer:?}", now - base());
                }
                h.r.handle_peer_down(now, peer);
                h.up[peer.0 as usize] = false;
            }
            3 => {
                if trace() {
                    eprintln!("{:?} peer heard {peer:?}", now - base());
                }
                h.r.handle_peer_heard(now, peer)
            }
            4..=10 => {
                // Mostly from a neighbour, sometimes from a peer that is not up.
                let from = match u.ratio(1, 16)? {
                    true => PeerId(NEIGHBOURS + 1),
                    false => peer,
                };
                let t = tlv(u)?;
                if let Tlv::Update(up) = t
                    && !up.metric.is_infinite()
                {
                    h.announced.insert(up.subnet);
                }
                if trace() {
                    eprintln!("{:?} from {from:?}: {t:?}", now - base());
                }
                h.tlvs += 1;
                h.r.handle_tlv(now, from, t);
            }
            11 => {
                let ms = match u.int_in_range(0u8..=3)? {
                    0 => u.int_in_range(0u64..=100)?,
                    1 => u.int_in_range(0u64..=5_000)?,
                    2 => u.int_in_range(0u64..=120_000)?,
                    _ => u.int_in_range(0u64..=7_200_000)?,
                };
                h.now += Duration::from_millis(ms);
                if trace() {
                    eprintln!("{:?} timeout", h.now - base());
                }
                h.r.handle_timeout(h.now);
            }
            12 | 13 => {
                if let Some(t) = h.r.poll_timeout() {
                    h.now = h.now.max(t);
                    if trace() {
                        eprintln!("{:?} timeout", h.now - base());
                    }
                    h.r.handle_timeout(h.now);
                }
            }
            14 => {
                let s = subnet(u)?;
                if trace() {
                    eprintln!("{:?} request route {s:?}", now - base());
                }
                let have = h.r.request_route(now, s);
                let own = h.r.own_subnet().contains_subnet(&s);
                assert_eq!(have, own || h.r.selected_route(&s).is_some());
            }
            _ => {
                let s = subnet(u)?;
                if trace() {
                    eprintln!("{:?} route used {s:?}", now - base());
                }
                h.r.handle_route_used(now, s);
            }
        }
        h.drain();
    }
    // Every neighbour gone and two idle hours: nothing is left.
    for p in 1..=NEIGHBOURS + 1 {
        h.r.handle_peer_down(h.now, PeerId(p));
        h.up[p as usize] = false;
        h.drain();
    }
    for _ in 0..2 {
        h.now += Duration::from_secs(3600);
        h.r.handle_timeout(h.now);
        h.drain();
    }
    assert_eq!(h.r.routes().count(), 0, "routes left");
    assert!(h.fib.is_empty(), "FIB entries left");
    assert_eq!(h.r.queried().count(), 0, "queries left");
    assert_eq!(h.r.cache_sizes(), (0, 0, 0), "cache entries left");
    let (_, timers) = h.r.table_sizes();
    assert!(timers <= 4, "{timers} timers left");
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
