//! One peer's flood of made-up route or seqno requests must not keep this node from repairing
//! and finding its own routes (the shared, capped tables it filled did), nor be passed on to
//! the neighbours beyond the peer's budget.

use std::time::{Duration, Instant};

use hyphae_proto::babel::{Config, FORWARDS_PER_SECOND, Router};
use hyphae_proto::{LinkKind, PeerId};
use hyphae_wire::babel::{RouteRequest, SeqnoRequest, Tlv, Update};
use hyphae_wire::identity::PublicKey;
use hyphae_wire::{Interval, Metric, RouterId, SeqNo, Subnet};

const HONEST: PeerId = PeerId(1);
const OTHER: PeerId = PeerId(2);
const EVIL: PeerId = PeerId(666);

fn rid(pk: &PublicKey) -> RouterId {
    RouterId::new(pk, 0, [9; 6])
}

fn update(subnet: Subnet, router_id: RouterId, seqno: u16, metric: Metric) -> Tlv {
    Tlv::Update(Update {
        flags: 0,
        interval: Interval::from_secs(300),
        seqno: SeqNo(seqno),
        metric,
        subnet,
        router_id,
    })
}

fn router(t0: Instant) -> Router {
    let me = PublicKey::from([1; 32]);
    let mut r = Router::new(t0, Config::default(), rid(&me));
    for p in [HONEST, OTHER, EVIL] {
        r.handle_peer_up(t0, p, LinkKind::TcpV6);
    }
    while r.poll_transmit().is_some() {}
    r
}

fn random_subnet(i: u32) -> Subnet {
    Subnet::v6_64(std::net::Ipv6Addr::from(
        0x05ff_u128 << 112 | u128::from(i) << 64,
    ))
}

/// The victim's route via HONEST (selected, advertised), and a worse route via OTHER that is
/// unfeasible; then HONEST retracts. The node must ask OTHER for a new seqno.
fn lose_route_and_count_seqno_requests(flood: bool) -> usize {
    let t0 = Instant::now();
    let mut r = router(t0);
    let victim = PublicKey::from([2; 32]);
    let vs = victim.subnet();
    r.handle_tlv(t0, OTHER, update(vs, rid(&victim), 10, Metric(1500)));
    r.handle_tlv(t0, HONEST, update(vs, rid(&victim), 10, Metric(100)));
    assert_eq!(r.selected_route(&vs).unwrap().next_hop, HONEST);
    while r.poll_transmit().is_some() {}
    let t1 = t0 + Duration::from_secs(1);
    if flood {
        // 65,536 SeqnoRequests (64 B each: 4 MB) for made-up
        // subnets, all within one second.
        for i in 0..65_536u32 {
            let sr = SeqnoRequest {
                seqno: SeqNo(1),
                hop_count: 64,
                router_id: rid(&victim),
                prefix: random_subnet(i),
            };
            r.handle_tlv(t1, EVIL, Tlv::SeqnoRequest(sr));
        }
        while r.poll_transmit().is_some() {}
    }
    let t2 = t1 + Duration::from_secs(1);
    r.handle_tlv(t2, HONEST, update(vs, rid(&victim), 10, Metric::INFINITE));
    assert!(r.selected_route(&vs).is_none());
    std::iter::from_fn(|| r.poll_transmit())
        .filter(|t| t.peer == OTHER && matches!(t.tlv, Tlv::SeqnoRequest(s) if s.prefix == vs))
        .count()
}

#[test]
fn a_seqno_request_flood_does_not_stop_own_route_repair() {
    assert_eq!(
        lose_route_and_count_seqno_requests(false),
        1,
        "control: repair asked for"
    );
    assert_eq!(
        lose_route_and_count_seqno_requests(true),
        1,
        "after EVIL's SeqnoRequest flood the node no longer asks for a new seqno"
    );
}

#[test]
fn a_route_request_flood_does_not_stop_own_route_discovery() {
    let t0 = Instant::now();
    let mut r = router(t0);
    // 65,536 RouteRequests for made-up subnets (21 B each: 1.4 MB) within one second.
    for i in 0..65_536u32 {
        let rq = RouteRequest {
            generation: 0,
            prefix: Some(random_subnet(i)),
        };
        r.handle_tlv(t0, EVIL, Tlv::RouteRequest(rq));
    }
    let forwarded = std::iter::from_fn(|| r.poll_transmit()).count();
    // To HONEST and OTHER, within EVIL's budget (it was 131,072).
    assert!(
        forwarded <= 2 * FORWARDS_PER_SECOND as usize,
        "the flood was forwarded as {forwarded} RouteRequests"
    );
    // Now this node needs a real route (a packet to send).
    let wanted = PublicKey::from([3; 32]).subnet();
    let t1 = t0 + Duration::from_secs(1);
    assert!(!r.request_route(t1, wanted));
    let asked: Vec<PeerId> = std::iter::from_fn(|| r.poll_transmit())
        .filter(|t| matches!(t.tlv, Tlv::RouteRequest(q) if q.prefix == Some(wanted)))
        .map(|t| t.peer)
        .collect();
    assert_eq!(
        asked.len(),
        3,
        "request_route must ask every peer; after the flood it asked {asked:?}; queried: {}",
        r.queried().filter(|(s, _)| *s == wanted).count()
    );
}

/// A request that comes again after SEQNO_RESEND (its first copy lost, or the asker repairing
/// again) is forwarded again, to the best next hop.
#[test]
fn a_repeated_seqno_request_is_forwarded_again() {
    let t0 = Instant::now();
    let me = PublicKey::from([1; 32]);
    let mut r = Router::new(t0, Config::default(), rid(&me));
    for p in [HONEST, OTHER] {
        r.handle_peer_up(t0, p, LinkKind::TcpV6);
    }
    let origin = PublicKey::from([2; 32]);
    let s = origin.subnet();
    r.handle_tlv(
        t0,
        OTHER,
        Tlv::Update(Update {
            flags: 0,
            interval: Interval::from_secs(300),
            seqno: SeqNo(10),
            metric: Metric(100),
            subnet: s,
            router_id: rid(&origin),
        }),
    );
    assert_eq!(r.selected_route(&s).unwrap().next_hop, OTHER);
    while r.poll_transmit().is_some() {}
    let sr = SeqnoRequest {
        seqno: SeqNo(11),
        hop_count: 64,
        router_id: rid(&origin),
        prefix: s,
    };
    let mut forwarded = Vec::new();
    for k in 0..3u64 {
        // The same request from HONEST, 5 s apart (well past SEQNO_RESEND = 1 s).
        let t = t0 + Duration::from_secs(1 + 5 * k);
        r.handle_tlv(t, HONEST, Tlv::SeqnoRequest(sr));
        let n = std::iter::from_fn(|| r.poll_transmit())
            .filter(|t| t.peer == OTHER && matches!(t.tlv, Tlv::SeqnoRequest(q) if q.prefix == s))
            .count();
        forwarded.push(n);
    }
    assert_eq!(
        forwarded,
        vec![1, 1, 1],
        "the same SeqnoRequest, repeated every 5 s, forwarded to the only next hop"
    );
}
