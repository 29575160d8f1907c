//! A source that restarts (a new router id) must not leave two nodes forwarding its packets to
//! each other: the split-horizon rule kept the next hop from hearing of the new source.

use std::time::{Duration, Instant};

use hyphae_proto::babel::{Config, Router};
use hyphae_proto::{LinkKind, PeerId};
use hyphae_wire::babel::{Ihu, Tlv, Update};
use hyphae_wire::identity::PublicKey;
use hyphae_wire::{Interval, Metric, RouterId, SeqNo, Subnet};

// X's neighbours: F7 (a long path to S), F9 (S itself), Y.
const F7: PeerId = PeerId(7);
const F9: PeerId = PeerId(9);
const X_TO_Y: PeerId = PeerId(100);
// Y's neighbours: X and F16 (a short path to S).
const Y_TO_X: PeerId = PeerId(200);
const F16: PeerId = PeerId(16);

fn upd(subnet: Subnet, rid: RouterId, seqno: u16, metric: Metric) -> Tlv {
    Tlv::Update(Update {
        flags: 0,
        interval: if metric.is_infinite() {
            Interval(0)
        } else {
            Interval::from_secs(300)
        },
        seqno: SeqNo(seqno),
        metric,
        subnet,
        router_id: rid,
    })
}

/// Delivers everything X and Y send to each other until both are quiet; frames to the
/// fake neighbours are dropped.
fn pump(now: Instant, x: &mut Router, y: &mut Router) {
    loop {
        let mut moved = false;
        while let Some(t) = x.poll_transmit() {
            if t.peer == X_TO_Y {
                y.handle_tlv(now, Y_TO_X, t.tlv);
                moved = true;
            }
        }
        while let Some(t) = y.poll_transmit() {
            if t.peer == Y_TO_X {
                x.handle_tlv(now, X_TO_Y, t.tlv);
                moved = true;
            }
        }
        if !moved {
            return;
        }
    }
}

#[test]
fn a_restarted_source_leaves_no_loop_between_its_old_and_new_router_ids() {
    let t0 = Instant::now();
    let cfg = Config {
        hash_seed: 1,
        ..Config::default()
    };
    let x_pk = PublicKey::from([1; 32]);
    let y_pk = PublicKey::from([2; 32]);
    let s_pk = PublicKey::from([5; 32]);
    let s = s_pk.subnet();
    let r1 = RouterId::new(&s_pk, 0, [1; 6]); // S before its restart
    let r2 = RouterId::new(&s_pk, 0, [2; 6]); // S after it
    let mut x = Router::new(t0, cfg.clone(), RouterId::new(&x_pk, 0, [0; 6]));
    let mut y = Router::new(t0, cfg, RouterId::new(&y_pk, 0, [0; 6]));
    for p in [F7, F9, X_TO_Y] {
        x.handle_peer_up(t0, p, LinkKind::TcpV6);
    }
    for p in [Y_TO_X, F16] {
        y.handle_peer_up(t0, p, LinkKind::TcpV6);
    }
    pump(t0, &mut x, &mut y);

    // S (router id r1) is known to X over a long path, to Y over a short one; X ends up
    // routing through Y.
    x.handle_tlv(t0, F7, upd(s, r1, 1, Metric(2000)));
    pump(t0, &mut x, &mut y);
    y.handle_tlv(t0, F16, upd(s, r1, 1, Metric(500)));
    pump(t0, &mut x, &mut y);
    assert_eq!(x.selected_route(&s).unwrap().next_hop, X_TO_Y);

    // S restarts next to X (new router id r2, seqno 0): X takes the direct route and
    // announces it to Y; the old incarnation is retracted on Y's side; Y now routes via X.
    x.handle_tlv(t0, F9, upd(s, r2, 0, Metric(0)));
    pump(t0, &mut x, &mut y);
    y.handle_tlv(t0, F16, upd(s, r1, 1, Metric::INFINITE));
    pump(t0, &mut x, &mut y);
    assert_eq!(y.selected_route(&s).unwrap().next_hop, Y_TO_X);
    assert_eq!(y.selected_route(&s).unwrap().router_id, r2);

    // The link X-S closes.
    x.handle_peer_down(t0, F9);
    pump(t0, &mut x, &mut y);

    // Keep both alive for 10 minutes (Hellos/IHUs between X and Y, IHUs from the fakes)
    // and look for the loop X -> Y -> X every second.
    let mut looped = Duration::ZERO;
    let mut t = t0;
    for _ in 0..600 {
        t += Duration::from_secs(1);
        let ihu = Tlv::Ihu(Ihu {
            rx_cost: Metric(10),
            interval: Interval(6000),
            address: None,
        });
        x.handle_tlv(t, F7, ihu);
        y.handle_tlv(t, F16, ihu);
        x.handle_timeout(t);
        y.handle_timeout(t);
        pump(t, &mut x, &mut y);
        let xn = x.selected_route(&s).map(|r| (r.next_hop, r.router_id));
        let yn = y.selected_route(&s).map(|r| (r.next_hop, r.router_id));
        if xn.is_some_and(|(p, _)| p == X_TO_Y) && yn.is_some_and(|(p, _)| p == Y_TO_X) {
            looped += Duration::from_secs(1);
        }
    }
    let xn = x.selected_route(&s).map(|r| (r.next_hop, r.router_id));
    let yn = y.selected_route(&s).map(|r| (r.next_hop, r.router_id));
    assert!(
        looped == Duration::ZERO,
        "X and Y forward S's packets to each other for {looped:?} of the 600 s after the cut \
         (X: {xn:?} [r1 = old incarnation], Y: {yn:?} [r2 = new])"
    );
}
