//! A hostile neighbour: hijack attempts, floods and seqno storms must not take a route away
//! from its owner, and the work and state they cause must stay bounded.

use std::time::{Duration, Instant};

use hyphae_proto::babel::{Config, Router};
use hyphae_proto::{LinkKind, PeerId};
use hyphae_wire::babel::{RouteRequest, SeqnoRequest, Tlv, Update};
use hyphae_wire::identity::PublicKey;
use hyphae_wire::{Interval, Metric, RouterId, SeqNo, Subnet};

const HONEST: PeerId = PeerId(1);
const OTHER: PeerId = PeerId(2);
const EVIL: PeerId = PeerId(666);
const CAP: usize = 500;

struct Lcg(u64);

impl Lcg {
    fn bytes32(&mut self) -> [u8; 32] {
        let mut b = [0; 32];
        for c in b.chunks_mut(8) {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            c.copy_from_slice(&self.0.to_le_bytes());
        }
        b
    }
}

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

/// Our router with an honest peer that brought the victim's route, and the attacker.
fn setup() -> (Router, Instant, PublicKey) {
    let t0 = Instant::now();
    let cfg = Config {
        max_routes_per_peer: CAP,
        max_cache_entries: CAP,
        hash_seed: 3,
        ..Config::default()
    };
    let me = PublicKey::from([1; 32]);
    let mut r = Router::new(t0, cfg, rid(&me));
    for p in [HONEST, OTHER, EVIL] {
        r.handle_peer_up(t0, p, LinkKind::TcpV6);
    }
    let victim = PublicKey::from([2; 32]);
    r.handle_tlv(
        t0,
        HONEST,
        update(victim.subnet(), rid(&victim), 10, Metric(100)),
    );
    while r.poll_transmit().is_some() {}
    while r.poll_fib_change().is_some() {}
    (r, t0, victim)
}

fn drain(r: &mut Router) -> usize {
    std::iter::from_fn(|| r.poll_transmit()).count()
}

#[test]
fn no_hijack_of_a_subnet_the_router_id_does_not_own() {
    let (mut r, t0, victim) = setup();
    let vs = victim.subnet();
    let evil = PublicKey::from([6; 32]);
    let mut attempts = vec![
        // The victim's /64 under the attacker's router id, metric 0, newer seqno.
        update(vs, rid(&evil), 11, Metric(0)),
        // A more specific prefix inside the victim's /64.
        update(
            Subnet::new(vs.addr(), 96).unwrap(),
            rid(&evil),
            0,
            Metric(0),
        ),
        // A covering prefix, shorter than /64.
        update(
            Subnet::new(vs.addr(), 48).unwrap(),
            rid(&evil),
            0,
            Metric(0),
        ),
        // The whole overlay.
        update(hyphae_wire::GLOBAL_SUBNET, rid(&evil), 0, Metric(0)),
        // Our own subnet.
        update(r.own_subnet(), rid(&evil), 0, Metric(0)),
    ];
    // Retraction of the victim's route from a peer that never had it.
    attempts.push(update(vs, rid(&victim), 11, Metric::INFINITE));
    for t in attempts {
        r.handle_tlv(t0, EVIL, t);
    }
    let sel = r.selected_route(&vs).expect("route kept");
    assert_eq!((sel.next_hop, sel.router_id), (HONEST, rid(&victim)));
    assert!(r.poll_fib_change().is_none(), "forwarding unchanged");
    assert_eq!(r.stats().updates_filtered, 5);
    assert_eq!(r.routes().filter(|v| v.next_hop == EVIL).count(), 0);
}

#[test]
fn floods_leave_bounded_state_and_work() {
    let (mut r, t0, victim) = setup();
    let mut rng = Lcg(5);
    let (routes0, timers0) = r.table_sizes();
    // 1. Retractions for 20 000 unknown subnets: nothing stored, nothing sent.
    for i in 0..20_000u32 {
        let pk = PublicKey::from(rng.bytes32());
        let s = Subnet::v6_64(std::net::Ipv6Addr::from(
            0x0400_u128 << 112 | u128::from(i) << 64,
        ));
        r.handle_tlv(t0, EVIL, update(s, rid(&pk), 0, Metric::INFINITE));
    }
    assert_eq!(r.table_sizes(), (routes0, timers0));
    assert_eq!(drain(&mut r), 0);

    // 2. 3 000 valid Updates for distinct attacker-made subnets: capped per peer.
    let mut sent = 0;
    for _ in 0..3_000 {
        let pk = PublicKey::from(rng.bytes32());
        r.handle_tlv(t0, EVIL, update(pk.subnet(), rid(&pk), 0, Metric(1)));
        sent += drain(&mut r);
    }
    let from_evil = r.routes().filter(|v| v.next_hop == EVIL).count();
    assert_eq!(from_evil, CAP);
    assert_eq!(r.stats().updates_capped, 3_000 - CAP as u64);
    assert!(
        sent <= 2 * CAP,
        "triggered updates only for accepted routes: {sent}"
    );

    // 3. Seqno storm on our own subnet: at most one bump per 4 s.
    let me = r.router_id();
    let own = r.own_subnet();
    let mut sent = 0;
    for i in 0..10_000u16 {
        let now = t0 + Duration::from_micros(u64::from(i) * 100); // 1 s in all
        let sr = SeqnoRequest {
            seqno: SeqNo(i.wrapping_add(1)),
            hop_count: 64,
            router_id: me,
            prefix: own,
        };
        r.handle_tlv(now, EVIL, Tlv::SeqnoRequest(sr));
        sent += drain(&mut r);
    }
    assert_eq!(r.stats().seqno_bumps, 1);
    assert_eq!(sent, 3, "one re-announcement to each of 3 peers");
    r.handle_timeout(t0 + Duration::from_secs(4));
    assert_eq!(r.stats().seqno_bumps, 2, "the deferred bump");
    assert_eq!(drain(&mut r), 3);

    // 4. Seqno storm for the victim: at most one forward per distinct request, cache capped.
    let mut sent = 0;
    for i in 0..5_000u16 {
        let sr = SeqnoRequest {
            seqno: SeqNo(11 + (i % 1000)),
            hop_count: 64,
            router_id: rid(&victim),
            prefix: victim.subnet(),
        };
        r.handle_tlv(t0 + Duration::from_secs(5), EVIL, Tlv::SeqnoRequest(sr));
        sent += drain(&mut r);
    }
    assert!(sent <= CAP, "{sent}");
    assert!(r.cache_sizes().1 <= CAP);
    // Each either a duplicate or over the peer's budget for forwarded requests.
    let st = r.stats();
    assert!(
        st.seqno_requests_deduped + st.forwards_rate_limited >= 4_000,
        "{st:?}"
    );

    // 5. RouteRequest flood: queries and the RR cache stay capped; wildcard dumps are
    // rate-limited.
    let mut sent = 0;
    let now = t0 + Duration::from_secs(6);
    for i in 0..5_000u32 {
        let s = Subnet::v6_64(std::net::Ipv6Addr::from(
            0x05ff_u128 << 112 | u128::from(i) << 64,
        ));
        let rq = RouteRequest {
            generation: 0,
            prefix: Some(s),
        };
        r.handle_tlv(now, EVIL, Tlv::RouteRequest(rq));
        sent += drain(&mut r);
    }
    assert!(r.queried().count() <= CAP);
    assert!(r.cache_sizes().2 <= CAP);
    assert!(sent <= 2 * CAP, "{sent}");
    let wildcard = Tlv::RouteRequest(RouteRequest {
        generation: 0,
        prefix: None,
    });
    r.handle_tlv(now, EVIL, wildcard);
    let dump = drain(&mut r);
    assert!(dump > CAP, "first wildcard answered with the whole table");
    for _ in 0..100 {
        r.handle_tlv(now, EVIL, wildcard);
    }
    assert_eq!(drain(&mut r), 0, "repeat wildcards within 5 s are ignored");

    // The victim's route survived all of it.
    let sel = r.selected_route(&victim.subnet()).unwrap();
    assert_eq!((sel.next_hop, sel.router_id), (HONEST, rid(&victim)));
}
