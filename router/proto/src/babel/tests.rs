//! Unit tests of the router state machine, driven by hand.

use std::time::{Duration, Instant};

use hyphae_wire::babel::{Hello, Ihu, RouteRequest, SeqnoRequest, Tlv, Update};
use hyphae_wire::identity::PublicKey;
use hyphae_wire::{Interval, Metric, RouterId, SeqNo, Subnet};

use super::*;
use crate::peer::PeerId;

fn rid(b: u8) -> RouterId {
    RouterId::new(&PublicKey::from([b; 32]), 0, [b; 6])
}

fn subnet_of(b: u8) -> Subnet {
    PublicKey::from([b; 32]).subnet()
}

fn update(src: u8, seqno: u16, metric: u16) -> Update {
    Update {
        flags: 0,
        interval: Interval::from_secs(300),
        seqno: SeqNo(seqno),
        metric: Metric(metric),
        subnet: subnet_of(src),
        router_id: rid(src),
    }
}

fn upd(src: u8, seqno: u16, metric: u16) -> Tlv {
    Tlv::Update(update(src, seqno, metric))
}

fn drain(r: &mut Router) -> Vec<Transmit> {
    std::iter::from_fn(|| r.poll_transmit()).collect()
}

fn fib(r: &mut Router) -> Vec<FibChange> {
    std::iter::from_fn(|| r.poll_fib_change()).collect()
}

fn updates_to(tx: &[Transmit], peer: PeerId) -> Vec<Update> {
    tx.iter()
        .filter(|t| t.peer == peer)
        .filter_map(|t| match t.tlv {
            Tlv::Update(u) => Some(u),
            _ => None,
        })
        .collect()
}

/// A router (node 1) with peers 10, 11, 12 up over TCP/IPv6 (cost 1010 each).
fn setup() -> (Router, Instant) {
    let t0 = Instant::now();
    let mut r = Router::new(t0, Config::default(), rid(1));
    for p in [10, 11, 12] {
        r.handle_peer_up(t0, PeerId(p), LinkKind::TcpV6);
    }
    drain(&mut r);
    (r, t0)
}

#[test]
fn greets_new_peer_and_answers_hello() {
    let t0 = Instant::now();
    let mut r = Router::new(t0, Config::default(), rid(1));
    r.handle_peer_up(t0, PeerId(10), LinkKind::TcpV6);
    let tx = drain(&mut r);
    let Tlv::Update(u) = tx[0].tlv else {
        panic!("first frame must be our Update: {tx:?}");
    };
    assert_eq!(
        (u.metric, u.subnet, u.router_id),
        (Metric(0), subnet_of(1), rid(1))
    );
    assert_eq!(u.interval, Interval(30000));
    assert!(matches!(tx[1].tlv, Tlv::Hello(h) if h.interval == Interval(2000)));
    r.handle_tlv(
        t0,
        PeerId(10),
        Tlv::Hello(Hello::unicast(SeqNo(0), Interval(2000))),
    );
    let tx = drain(&mut r);
    assert_eq!(
        tx,
        vec![Transmit {
            peer: PeerId(10),
            tlv: Tlv::Ihu(Ihu {
                rx_cost: Metric(1010),
                interval: Interval(6000),
                address: None,
            }),
        }]
    );
    // Unknown peers are ignored.
    r.handle_tlv(
        t0,
        PeerId(99),
        Tlv::Hello(Hello::unicast(SeqNo(0), Interval(2000))),
    );
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.stats().unknown_peer, 1);
}

#[test]
fn hellos_ihu_cost_and_dead_peer() {
    let t0 = Instant::now();
    let cfg = Config {
        hello_interval: Duration::from_secs(1),
        ..Config::default()
    };
    let mut r = Router::new(t0, cfg, rid(1));
    r.handle_peer_up(t0, PeerId(10), LinkKind::QuicV6);
    r.handle_tlv(t0, PeerId(10), upd(2, 0, 0));
    drain(&mut r);
    fib(&mut r);
    assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    // IHU 20 ms after the Hello sent at peer-up.
    let ihu = Tlv::Ihu(Ihu {
        rx_cost: Metric(1),
        interval: Interval(6000),
        address: None,
    });
    r.handle_tlv(t0 + Duration::from_millis(20), PeerId(10), ihu);
    assert_eq!(r.peers().next().unwrap().link_cost, Metric(902 + 7));
    // Periodic Hellos, then silence: dead after 2*1+3 = 5 s without IHU.
    let mut t = t0;
    let mut hellos = 0;
    let mut dead = None;
    while let Some(next) = r.poll_timeout() {
        if next > t0 + Duration::from_secs(10) {
            break;
        }
        t = next;
        r.handle_timeout(t);
        hellos += drain(&mut r)
            .iter()
            .filter(|x| matches!(x.tlv, Tlv::Hello(h) if h.interval == Interval(100)))
            .count();
        if let Some(Event::PeerDead(p)) = r.poll_event() {
            dead = Some((p, t));
        }
    }
    let (p, at) = dead.expect("peer declared dead");
    assert_eq!(p, PeerId(10));
    assert_eq!(at, t0 + Duration::from_millis(20) + Duration::from_secs(5));
    assert_eq!(hellos, 5, "hellos at 1..=5 s");
    assert_eq!(
        fib(&mut r),
        vec![FibChange {
            subnet: subnet_of(2),
            next_hop: None
        }]
    );
    assert_eq!(r.peers().count(), 0);
    let _ = t;
}

#[test]
fn filters_reject_bad_updates() {
    let (mut r, t0) = setup();
    let mut bad = Vec::new();
    // Router id does not own the subnet.
    let mut u = update(2, 0, 0);
    u.router_id = rid(3);
    bad.push(u);
    // Prefix shorter than /64.
    let mut short = u;
    short.router_id = rid(2);
    short.subnet = Subnet::new(subnet_of(2).addr(), 48).unwrap();
    bad.push(short);
    // Outside 400::/7.
    let mut outside = short;
    outside.subnet = "2001:db8::/64".parse().unwrap();
    bad.push(outside);
    // Our own subnet, even with our own router id.
    let mut own = short;
    own.subnet = subnet_of(1);
    own.router_id = rid(1);
    bad.push(own);
    for u in bad {
        r.handle_tlv(t0, PeerId(10), Tlv::Update(u));
    }
    assert_eq!(r.stats().updates_filtered, 4);
    assert_eq!(r.routes().count(), 0);
    assert!(drain(&mut r).is_empty());
    // A retraction need not be owned, but for an unknown subnet it changes nothing.
    let mut retr = u;
    retr.metric = Metric::INFINITE;
    r.handle_tlv(t0, PeerId(10), Tlv::Update(retr));
    assert_eq!(r.routes().count(), 0);
}

#[test]
fn acquired_route_goes_to_fib_and_is_triggered_to_other_peers() {
    let (mut r, t0) = setup();
    r.handle_tlv(t0, PeerId(10), upd(2, 5, 100));
    assert_eq!(
        fib(&mut r),
        vec![FibChange {
            subnet: subnet_of(2),
            next_hop: Some(PeerId(10))
        }]
    );
    let tx = drain(&mut r);
    assert!(updates_to(&tx, PeerId(10)).is_empty(), "split horizon");
    for p in [11, 12] {
        let u = updates_to(&tx, PeerId(p));
        assert_eq!(u.len(), 1);
        assert_eq!((u[0].metric, u[0].seqno), (Metric(1110), SeqNo(5)));
    }
    let v = r.selected_route(&subnet_of(2)).unwrap();
    assert_eq!(
        (v.next_hop, v.metric, v.router_id),
        (PeerId(10), Metric(1110), rid(2))
    );
    // A refresh with the same values triggers nothing.
    r.handle_tlv(t0, PeerId(10), upd(2, 5, 100));
    assert!(drain(&mut r).is_empty());
    // A metric change of more than 10 is triggered.
    r.handle_tlv(t0, PeerId(10), upd(2, 6, 150));
    assert_eq!(
        updates_to(&drain(&mut r), PeerId(11))[0].metric,
        Metric(1160)
    );
    // A better second route within 10 does not switch; one better by more does.
    r.handle_tlv(t0, PeerId(11), upd(2, 6, 145));
    assert!(fib(&mut r).is_empty());
    assert_eq!(
        r.selected_route(&subnet_of(2)).unwrap().next_hop,
        PeerId(10)
    );
    r.handle_tlv(t0, PeerId(12), upd(2, 6, 120));
    assert_eq!(
        r.selected_route(&subnet_of(2)).unwrap().next_hop,
        PeerId(12)
    );
    assert_eq!(fib(&mut r).len(), 1);
    assert_eq!(r.routes().count(), 3);
}

#[test]
fn unfeasible_update_for_selected_route_asks_for_seqno() {
    let (mut r, t0) = setup();
    r.handle_tlv(t0, PeerId(10), upd(2, 5, 100));
    drain(&mut r); // we advertised (5, 1110): the feasibility distance
    r.handle_tlv(t0, PeerId(10), upd(2, 5, 2000));
    assert_eq!(r.stats().updates_unfeasible, 1);
    let tx = drain(&mut r);
    assert_eq!(tx.len(), 1);
    let Tlv::SeqnoRequest(sr) = tx[0].tlv else {
        panic!("{tx:?}");
    };
    assert_eq!(tx[0].peer, PeerId(10));
    assert_eq!(
        (sr.seqno, sr.hop_count, sr.router_id),
        (SeqNo(6), 64, rid(2))
    );
    assert_eq!(
        r.selected_route(&subnet_of(2)).unwrap().metric,
        Metric(1110),
        "not applied"
    );
    // An unfeasible update for a new entry is ignored.
    r.handle_tlv(t0, PeerId(11), upd(2, 5, 1500));
    assert_eq!(r.routes().count(), 1);
    // A newer seqno is feasible whatever the metric; it satisfies our request and is
    // triggered.
    r.handle_tlv(t0, PeerId(10), upd(2, 6, 2000));
    assert_eq!(
        r.selected_route(&subnet_of(2)).unwrap().metric,
        Metric(3010)
    );
    assert_eq!(updates_to(&drain(&mut r), PeerId(11)).len(), 1);
}

#[test]
fn feasibility_across_seqno_wrap() {
    let (mut r, t0) = setup();
    r.handle_tlv(t0, PeerId(10), upd(2, 65535, 100));
    drain(&mut r);
    r.handle_tlv(t0, PeerId(10), upd(2, 0, 5000));
    let v = r.selected_route(&subnet_of(2)).unwrap();
    assert_eq!(
        (v.seqno, v.metric),
        (SeqNo(0), Metric(6010)),
        "0 is newer than 65535"
    );
    drain(&mut r);
    r.handle_tlv(t0, PeerId(11), upd(2, 65535, 1));
    assert_eq!(r.stats().updates_unfeasible, 1, "65535 is older than 0");
}

#[test]
fn retraction_and_hold() {
    let (mut r, t0) = setup();
    r.handle_tlv(t0, PeerId(10), upd(2, 1, 100));
    drain(&mut r);
    fib(&mut r);
    let t1 = t0 + Duration::from_secs(1);
    let mut retr = update(2, 1, 0);
    retr.metric = Metric::INFINITE;
    retr.interval = Interval(0);
    r.handle_tlv(t1, PeerId(10), Tlv::Update(retr));
    assert_eq!(fib(&mut r)[0].next_hop, None);
    let tx = drain(&mut r);
    assert_eq!(tx.len(), 3, "retraction to every peer: {tx:?}");
    assert!(
        tx.iter()
            .all(|t| matches!(t.tlv, Tlv::Update(u) if u.metric.is_infinite()))
    );
    let held = r.routes().next().unwrap();
    assert!(held.metric.is_infinite() && !held.selected);
    assert_eq!(held.expires, t1 + RETRACTED_ROUTE_HOLD);
    r.handle_timeout(t1 + RETRACTED_ROUTE_HOLD);
    assert_eq!(r.routes().count(), 0);
    assert_eq!(r.table_sizes().0, 0);
}

#[test]
fn peer_down_falls_back_or_retracts() {
    let (mut r, t0) = setup();
    r.handle_tlv(t0, PeerId(10), upd(2, 1, 100));
    r.handle_tlv(t0, PeerId(11), upd(2, 1, 300));
    r.handle_tlv(t0, PeerId(10), upd(3, 1, 100));
    drain(&mut r);
    fib(&mut r);
    r.handle_peer_down(t0, PeerId(10));
    let mut changes = fib(&mut r);
    changes.sort_by_key(|c| c.subnet);
    let mut want = vec![
        FibChange {
            subnet: subnet_of(2),
            next_hop: Some(PeerId(11)),
        },
        FibChange {
            subnet: subnet_of(3),
            next_hop: None,
        },
    ];
    want.sort_by_key(|c| c.subnet);
    assert_eq!(changes, want);
    let tx = drain(&mut r);
    // Subnet 3 retracted to 11 and 12; subnet 2 rerouted: not triggered (same router id,
    // metric change 200 > 10 so it is) — to 12 only, 11 is the next hop.
    assert!(updates_to(&tx, PeerId(10)).is_empty());
    let to12 = updates_to(&tx, PeerId(12));
    assert!(
        to12.iter()
            .any(|u| u.subnet == subnet_of(3) && u.metric.is_infinite())
    );
    assert!(
        to12.iter()
            .any(|u| u.subnet == subnet_of(2) && u.metric == Metric(1310))
    );
    // Entries of a closed peer are retracted (selected) or gone (fallback).
    r.handle_timeout(t0 + RETRACTED_ROUTE_HOLD);
    assert_eq!(r.routes().count(), 1);
}

#[test]
fn own_seqno_bumps_are_rate_limited_and_wrap() {
    let (mut r, t0) = setup();
    let sr = |seqno: u16| {
        Tlv::SeqnoRequest(SeqnoRequest {
            seqno: SeqNo(seqno),
            hop_count: 64,
            router_id: rid(1),
            prefix: subnet_of(1),
        })
    };
    r.handle_tlv(t0, PeerId(10), sr(1));
    assert_eq!(r.seqno(), SeqNo(1));
    let tx = drain(&mut r);
    assert_eq!(tx.len(), 3, "own route to every peer");
    // A storm within 4 s: one more bump, deferred to t0 + 4 s.
    for i in 0..1000u16 {
        r.handle_tlv(
            t0 + Duration::from_millis(u64::from(i)),
            PeerId(11),
            sr(2 + i),
        );
    }
    assert_eq!(r.seqno(), SeqNo(1));
    assert!(drain(&mut r).is_empty());
    r.handle_timeout(t0 + SEQNO_BUMP_TIMEOUT);
    assert_eq!(r.seqno(), SeqNo(2));
    assert_eq!(r.stats().seqno_bumps, 2);
    // A request for a seqno we already have gets our route back, no bump.
    r.handle_tlv(t0 + SEQNO_BUMP_TIMEOUT * 3, PeerId(12), sr(2));
    assert_eq!(r.seqno(), SeqNo(2));
    assert_eq!(
        updates_to(&drain(&mut r), PeerId(12)).len(),
        2,
        "bump at 4 s, then reply"
    );
    // Wrap-around.
    r.seqno = SeqNo(u16::MAX);
    r.handle_tlv(t0 + SEQNO_BUMP_TIMEOUT * 5, PeerId(10), sr(0));
    assert_eq!(r.seqno(), SeqNo(0));
}

#[test]
fn seqno_requests_are_answered_forwarded_and_deduped() {
    let (mut r, t0) = setup();
    r.handle_tlv(t0, PeerId(10), upd(2, 5, 100));
    r.handle_tlv(t0, PeerId(11), upd(2, 5, 200));
    drain(&mut r);
    let req = |seqno: u16, hop_count: u8| SeqnoRequest {
        seqno: SeqNo(seqno),
        hop_count,
        router_id: rid(2),
        prefix: subnet_of(2),
    };
    // We have seqno 5 >= 5: answer with our route.
    r.handle_tlv(t0, PeerId(12), Tlv::SeqnoRequest(req(5, 64)));
    let tx = drain(&mut r);
    assert_eq!(updates_to(&tx, PeerId(12)).len(), 1);
    // Seqno 6: forward to the best feasible route's neighbour, hop count - 1.
    r.handle_tlv(t0, PeerId(12), Tlv::SeqnoRequest(req(6, 64)));
    let tx = drain(&mut r);
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].peer, PeerId(10));
    assert!(matches!(tx[0].tlv, Tlv::SeqnoRequest(s) if s.hop_count == 63 && s.seqno == SeqNo(6)));
    // Duplicate within 60 s: dropped.
    r.handle_tlv(t0, PeerId(11), Tlv::SeqnoRequest(req(6, 64)));
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.stats().seqno_requests_deduped, 1);
    // Hop count 1: not forwarded.
    r.handle_tlv(t0, PeerId(12), Tlv::SeqnoRequest(req(7, 1)));
    assert!(drain(&mut r).is_empty());
    // The answer arrives: the pending request is satisfied and the update triggered.
    r.handle_tlv(t0, PeerId(10), upd(2, 6, 100));
    assert_eq!(updates_to(&drain(&mut r), PeerId(12)).len(), 1);
}

#[test]
fn route_requests() {
    let (mut r, t0) = setup();
    r.handle_tlv(t0, PeerId(10), upd(2, 1, 100));
    drain(&mut r);
    let rq = |generation: u8, s: Subnet| {
        Tlv::RouteRequest(RouteRequest {
            generation,
            prefix: Some(s),
        })
    };
    // Own subnet: our Update, metric 0.
    r.handle_tlv(t0, PeerId(11), rq(3, subnet_of(1)));
    let u = updates_to(&drain(&mut r), PeerId(11));
    assert_eq!((u.len(), u[0].metric), (1, Metric(0)));
    // Selected route: answered, except to its next hop.
    r.handle_tlv(t0, PeerId(11), rq(0, subnet_of(2)));
    assert_eq!(
        updates_to(&drain(&mut r), PeerId(11))[0].metric,
        Metric(1110)
    );
    r.handle_tlv(t0, PeerId(10), rq(0, subnet_of(2)));
    assert!(drain(&mut r).is_empty());
    // Unknown: forwarded with generation + 1 to every other peer, once.
    r.handle_tlv(t0, PeerId(11), rq(4, subnet_of(9)));
    let tx = drain(&mut r);
    let mut to: Vec<_> = tx.iter().map(|t| t.peer).collect();
    to.sort();
    assert_eq!(to, vec![PeerId(10), PeerId(12)]);
    assert!(
        tx.iter()
            .all(|t| matches!(t.tlv, Tlv::RouteRequest(q) if q.generation == 5))
    );
    r.handle_tlv(t0, PeerId(12), rq(4, subnet_of(9)));
    assert!(drain(&mut r).is_empty(), "query in flight: silent");
    // Generation limit.
    r.handle_tlv(t0, PeerId(11), rq(15, subnet_of(8)));
    assert!(drain(&mut r).is_empty());
    r.handle_tlv(t0, PeerId(11), rq(14, subnet_of(8)));
    assert_eq!(drain(&mut r).len(), 2);
    // Wildcard: own route and every selected route, rate-limited per peer.
    r.handle_tlv(
        t0,
        PeerId(12),
        Tlv::RouteRequest(RouteRequest {
            generation: 0,
            prefix: None,
        }),
    );
    let u = updates_to(&drain(&mut r), PeerId(12));
    let mut subnets: Vec<_> = u.iter().map(|u| u.subnet).collect();
    subnets.sort();
    let mut want = vec![subnet_of(1), subnet_of(2)];
    want.sort();
    assert_eq!(subnets, want);
    r.handle_tlv(
        t0,
        PeerId(12),
        Tlv::RouteRequest(RouteRequest {
            generation: 0,
            prefix: None,
        }),
    );
    assert!(drain(&mut r).is_empty());
}

#[test]
fn request_route_queries_and_times_out() {
    let (mut r, t0) = setup();
    assert!(r.request_route(t0, subnet_of(1)), "our own subnet");
    assert!(drain(&mut r).is_empty());
    assert!(!r.request_route(t0, subnet_of(7)));
    let tx = drain(&mut r);
    assert_eq!(tx.len(), 3);
    assert!(
        tx.iter()
            .all(|t| matches!(t.tlv, Tlv::RouteRequest(q) if q.generation == 0))
    );
    assert!(!r.request_route(t0, subnet_of(7)));
    assert!(drain(&mut r).is_empty(), "already in flight");
    assert_eq!(
        r.queried().next(),
        Some((subnet_of(7), t0 + ROUTE_QUERY_TIMEOUT))
    );
    // A new peer gets the pending request right after our Update and Hello.
    r.handle_peer_up(t0, PeerId(13), LinkKind::TcpV4);
    let tx = drain(&mut r);
    assert!(matches!(tx[2].tlv, Tlv::RouteRequest(q) if q.prefix == Some(subnet_of(7))));
    // Another subnet is found; ours times out.
    assert!(!r.request_route(t0, subnet_of(2)));
    r.handle_tlv(t0, PeerId(10), upd(2, 1, 100));
    assert!(r.request_route(t0, subnet_of(2)));
    r.handle_timeout(t0 + ROUTE_QUERY_TIMEOUT);
    assert_eq!(r.poll_event(), Some(Event::QueryTimedOut(subnet_of(7))));
    assert_eq!(r.poll_event(), None);
    assert_eq!(r.queried().count(), 0);
}

#[test]
fn route_expiry_retracts_then_removes() {
    let (mut r, t0) = setup();
    let mut u = update(2, 1, 100);
    u.interval = Interval::from_secs(4);
    r.handle_tlv(t0, PeerId(10), Tlv::Update(u));
    drain(&mut r);
    fib(&mut r);
    let first = r.selected_route(&subnet_of(2)).unwrap().expires;
    assert_eq!(first, t0 + Duration::from_secs(14), "3.5 x interval");
    // A refresh pushes expiry out without touching the timer; the early timer re-arms.
    let t8 = t0 + Duration::from_secs(8);
    r.handle_tlv(t8, PeerId(10), Tlv::Update(u));
    r.handle_timeout(first);
    assert!(
        fib(&mut r).is_empty(),
        "refreshed route survives its first deadline"
    );
    let exp = r.selected_route(&subnet_of(2)).unwrap().expires;
    assert_eq!(exp, t8 + Duration::from_secs(14));
    assert!(r.poll_timeout().unwrap() <= exp);
    drain(&mut r);
    r.handle_timeout(exp);
    assert_eq!(fib(&mut r)[0].next_hop, None);
    let tx = drain(&mut r);
    let retractions = [10, 11, 12].map(|p| updates_to(&tx, PeerId(p)));
    assert!(
        retractions
            .iter()
            .all(|u| u.len() == 1 && u[0].metric.is_infinite())
    );
    r.handle_timeout(exp + RETRACTED_ROUTE_HOLD);
    assert_eq!(r.routes().count(), 0);
}

#[test]
fn caps_bound_the_route_table() {
    let t0 = Instant::now();
    let cfg = Config {
        max_routes_per_peer: 5,
        ..Config::default()
    };
    let mut r = Router::new(t0, cfg, rid(1));
    r.handle_peer_up(t0, PeerId(10), LinkKind::TcpV6);
    for b in 2..40 {
        r.handle_tlv(t0, PeerId(10), upd(b, 0, 0));
    }
    assert_eq!(r.routes().count(), 5);
    assert_eq!(r.stats().updates_capped, 33);
}

#[test]
fn used_route_near_expiry_is_refreshed_by_route_request() {
    let (mut r, t0) = setup();
    let mut u = update(2, 1, 100);
    u.interval = Interval::from_secs(10);
    r.handle_tlv(t0, PeerId(10), Tlv::Update(u));
    drain(&mut r);
    // 35 s hold: at 10 s the route is not close to expiry.
    r.handle_route_used(t0 + Duration::from_secs(10), subnet_of(2));
    assert!(drain(&mut r).is_empty());
    // At 25 s it is within 15 s of expiry: one RouteRequest per peer, once.
    let t25 = t0 + Duration::from_secs(25);
    r.handle_route_used(t25, subnet_of(2));
    let tx = drain(&mut r);
    assert_eq!(tx.len(), 3);
    assert!(tx.iter().all(|t| matches!(t.tlv,
        Tlv::RouteRequest(q) if q.prefix == Some(subnet_of(2)) && q.generation == 0)));
    r.handle_route_used(t25, subnet_of(2));
    assert!(drain(&mut r).is_empty(), "query in flight");
    // The answer refreshes the route and clears the query.
    r.handle_tlv(t25, PeerId(10), Tlv::Update(u));
    assert_eq!(
        r.selected_route(&subnet_of(2)).unwrap().expires,
        t25 + Duration::from_secs(35)
    );
    assert_eq!(r.queried().count(), 0, "query answered");
}

#[test]
fn answers_to_one_peer_are_rate_limited() {
    use super::ANSWERS_PER_SECOND;
    let (mut r, t0) = setup();
    r.handle_tlv(t0, PeerId(10), upd(2, 1, 100));
    drain(&mut r);
    let own = Tlv::RouteRequest(RouteRequest {
        generation: 0,
        prefix: Some(subnet_of(1)),
    });
    let selected = Tlv::RouteRequest(RouteRequest {
        generation: 0,
        prefix: Some(subnet_of(2)),
    });
    // A peer flooding requests for our subnet and a route we hold, within one second.
    let mut answered = 0;
    for i in 0..1000u64 {
        let t = t0 + Duration::from_micros(i * 500);
        r.handle_tlv(t, PeerId(11), if i % 2 == 0 { own } else { selected });
        answered += updates_to(&drain(&mut r), PeerId(11)).len();
    }
    assert_eq!(answered, ANSWERS_PER_SECOND as usize);
    assert_eq!(
        r.stats().answers_rate_limited,
        1000 - u64::from(ANSWERS_PER_SECOND)
    );
    // Another peer still gets its answer, and the flooding one again a second later.
    r.handle_tlv(t0 + Duration::from_millis(600), PeerId(12), own);
    assert_eq!(updates_to(&drain(&mut r), PeerId(12)).len(), 1);
    r.handle_tlv(t0 + Duration::from_millis(1600), PeerId(11), own);
    assert_eq!(updates_to(&drain(&mut r), PeerId(11)).len(), 1);
}
