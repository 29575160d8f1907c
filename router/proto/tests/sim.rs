//! Deterministic multi-node simulations of the control plane (see `sim/net.rs`).
//!
//! Every step that changes a forwarding table is checked for loops (the harness panics on
//! one). Run with `--nocapture` to see the recorded convergence times.

#[path = "sim/net.rs"]
mod net;

use std::time::Duration;

use hyphae_proto::babel::Config;
use hyphae_proto::{Event, FibWriter};
use net::{Net, topo};

fn cfg(hello_secs: u64) -> Config {
    Config {
        hello_interval: Duration::from_secs(hello_secs),
        hash_seed: 7,
        ..Config::default()
    }
}

/// Runs until every node reaches every other (or panics after `limit`).
fn converge(net: &mut Net, limit: Duration, what: &str) -> Duration {
    let w = std::time::Instant::now();
    let t = net.run_until(limit, Net::all_reach_all).unwrap_or_else(|| {
        panic!(
            "{what}: no full reachability after {limit:?}: {} pairs missing",
            net.unreachable_pairs()
        )
    });
    println!(
        "{what}: converged at {t:?} simulated, {} frames (hello/ihu/update/retraction/rr/sr \
         {:?}), wall {:?}",
        net.frames,
        net.by_type,
        w.elapsed()
    );
    t
}

#[test]
fn line_ring_grid_converge_without_loops() {
    let mut line = Net::new(20, 1, cfg(5));
    topo::line(&mut line, 20);
    converge(&mut line, Duration::from_secs(30), "line 20");

    let mut ring = Net::new(40, 2, cfg(5));
    topo::ring(&mut ring, 20);
    converge(&mut ring, Duration::from_secs(30), "ring 40");

    let mut grid = Net::new(100, 3, cfg(5));
    topo::grid(&mut grid, 10, 20);
    converge(&mut grid, Duration::from_secs(30), "grid 10x10");
    // Quiet afterwards: still no loop and still full reachability after the hello/IHU
    // traffic has moved every link cost.
    let w = std::time::Instant::now();
    grid.run_for(Duration::from_secs(60));
    println!("quiet 60 s: {} frames, wall {:?}", grid.frames, w.elapsed());
    assert!(grid.all_reach_all());
    assert!(
        grid.loop_walks > 1000,
        "loop checks ran: {}",
        grid.loop_walks
    );
}

#[test]
fn random_200_link_cut_is_routed_around() {
    let mut net = Net::new(200, 42, cfg(5));
    topo::random(&mut net, 200, 50);
    converge(&mut net, Duration::from_secs(60), "random 200");
    net.run_for(Duration::from_secs(20));
    assert!(net.all_reach_all());
    // Cut the busiest link whose loss keeps the graph connected.
    let usage = net.link_usage();
    let mut order: Vec<usize> = (0..net.links.len()).collect();
    order.sort_by_key(|&l| std::cmp::Reverse(usage[l]));
    let cut = order
        .into_iter()
        .find(|&l| net.connected_without(l))
        .expect("a non-bridge link");
    let start = net.elapsed();
    net.link_down(cut);
    let lost = net.unreachable_pairs();
    assert!(lost > 0, "the cut link carried routes");
    let done = net
        .run_until(start + Duration::from_secs(30), Net::all_reach_all)
        .expect("reconverged after the cut");
    let took = done - start;
    println!(
        "random 200: link {cut} carried {} routes; {lost} pairs lost; \
         reconverged in {took:?} simulated",
        usage[cut]
    );
    // Both ends see the close at once; repair needs at most a SeqnoRequest round trip to the
    // source and back across the graph (diameter ~10 hops x 50 ms each way) plus one 4 s
    // seqno-bump rate limit window.
    assert!(took < Duration::from_secs(6), "convergence took {took:?}");
    net.run_for(Duration::from_secs(30));
    assert!(net.all_reach_all(), "stays converged");
}

#[test]
fn dead_node_is_routed_around_and_retraction_propagates() {
    let mut net = Net::new(60, 5, cfg(1));
    topo::random(&mut net, 60, 30);
    converge(&mut net, Duration::from_secs(30), "random 60");
    // Pick a node with several links whose death keeps the rest connected.
    let candidates: Vec<usize> = (0..60).filter(|&n| net.links_of(n).count() >= 3).collect();
    let victim = candidates
        .into_iter()
        .find(|&n| {
            net.nodes[n].alive = false;
            let ok = net.connected_without(usize::MAX);
            net.nodes[n].alive = true;
            ok
        })
        .expect("a non-cut vertex");
    let dead_subnet = net.nodes[victim].subnet;
    let start = net.elapsed();
    net.kill(victim);
    let done = net
        .run_until(start + Duration::from_secs(30), |n| {
            n.all_reach_all() && n.nodes.iter().all(|x| x.fib[victim].is_none())
        })
        .expect("routed around the dead node and its subnet retracted everywhere");
    let took = done - start;
    println!("random 60: silent node death handled in {took:?} simulated (hello 1 s)");
    // Detection takes 2 x hello + 3 s = 5 s without IHU.
    assert!(took >= Duration::from_secs(4), "{took:?}");
    assert!(took < Duration::from_secs(12), "{took:?}");
    assert!(
        net.events
            .iter()
            .any(|(_, _, e)| matches!(e, Event::PeerDead(_))),
        "neighbours declared it dead"
    );
    // Retracted routes are gone after the hold time too.
    net.run_for(Duration::from_secs(10));
    for n in net.nodes.iter().filter(|n| n.alive) {
        assert!(n.router.routes().all(|r| r.subnet != dead_subnet));
    }
}

#[test]
fn restarted_node_is_relearned() {
    let mut net = Net::new(50, 9, cfg(5));
    topo::random(&mut net, 50, 30);
    converge(&mut net, Duration::from_secs(30), "random 50");
    net.run_for(Duration::from_secs(5));
    let k = 17;
    let old = net.nodes[k].router.router_id();
    let subnet = net.nodes[k].subnet;
    let start = net.elapsed();
    net.restart(k);
    let new = net.nodes[k].router.router_id();
    assert_ne!(old, new);
    assert_eq!(net.nodes[k].router.seqno().0, 0);
    let done = net
        .run_until(start + Duration::from_secs(20), |n| {
            n.nodes.iter().enumerate().all(|(i, x)| {
                i == k
                    || x.router
                        .selected_route(&subnet)
                        .is_some_and(|r| r.router_id == new)
            }) && n.walk_all(k).iter().all(|r| *r)
        })
        .expect("restarted node re-learned under its new router id");
    println!("random 50: restarted node re-learned in {:?}", done - start);
}

#[test]
fn route_request_finds_far_node() {
    let config = Config {
        update_interval: Duration::from_secs(10),
        ..cfg(5)
    };
    let mut net = Net::new(12, 11, config);
    topo::line(&mut net, 10);
    converge(&mut net, Duration::from_secs(10), "line 12");
    let far = net.nodes[11].subnet;
    // Remote routes are not re-flooded: once link costs have settled (no more triggered
    // updates), they expire after 3.5 update intervals everywhere but next to their source.
    let mut waited = 0;
    while net.nodes[0].router.selected_route(&far).is_some() {
        net.run_for(Duration::from_secs(10));
        waited += 10;
        assert!(waited < 1000, "remote route never expired");
    }
    assert!(net.nodes[10].router.selected_route(&far).is_some());
    let start = net.elapsed();
    assert!(!net.nodes[0].router.request_route(net.now, far));
    net.drain(0);
    let found = net
        .run_until(start + Duration::from_secs(5), |n| {
            n.nodes[0].router.selected_route(&far).is_some()
        })
        .expect("the RouteRequest found the node 11 hops away");
    let r = net.nodes[0].router.selected_route(&far).unwrap();
    println!(
        "line 12: on-demand route 11 hops away in {:?}",
        found - start
    );
    assert!(found - start < Duration::from_secs(1));
    assert!(net.walk_all(11)[0], "and it is a working path");
    assert_eq!(r.router_id, net.nodes[11].router.router_id());
    assert!(
        net.nodes[0].router.queried().next().is_none(),
        "query resolved"
    );
}

#[test]
fn simulation_is_deterministic_and_feeds_a_fib() {
    let run = || {
        let mut net = Net::new(30, 77, cfg(2));
        topo::grid(&mut net, 6, 25);
        net.loss = 0.01;
        net.run_for(Duration::from_secs(20));
        let mut fibs: Vec<Vec<_>> = net.nodes.iter().map(|n| n.fib.clone()).collect();
        fibs.push(Vec::new());
        (net.frames, fibs)
    };
    let (a, fa) = run();
    let (b, fb) = run();
    assert_eq!(a, b, "same seed, same frames");
    assert_eq!(fa, fb, "same seed, same tables");

    // A node's FIB changes drive a published FibWriter that agrees with the router.
    let mut net = Net::new(10, 3, cfg(5));
    topo::ring(&mut net, 10);
    converge(&mut net, Duration::from_secs(10), "ring 10");
    let mut w = FibWriter::new(1);
    let reader = w.reader();
    for (d, p) in net.nodes[0].fib.iter().enumerate() {
        if let Some(p) = p {
            w.apply(hyphae_proto::FibChange {
                subnet: net.nodes[d].subnet,
                next_hop: Some(*p),
            });
        }
    }
    assert!(w.publish());
    for n in &net.nodes[1..] {
        let std::net::IpAddr::V6(a) = n.subnet.addr() else {
            unreachable!()
        };
        let want = net.nodes[0]
            .router
            .selected_route(&n.subnet)
            .map(|r| r.next_hop);
        assert_eq!(reader.lookup(a), want);
        assert!(want.is_some());
    }
}

/// Two disjoint paths between X and Z (X-A-Z, X-B-Z); the relay X uses dies silently (no link
/// goes down: a frozen process). With hyphae's 300 ms Hellos the neighbours hear no IHU for
/// 1.5 s, declare it dead, and X and Z both forward over the other relay within 2 s.
#[test]
fn silent_relay_death_fails_over_within_two_seconds() {
    let config = Config {
        hello_interval: Duration::from_millis(300),
        hash_seed: 7,
        ..Config::default()
    };
    for seed in 0..32 {
        let mut net = Net::new(4, seed, config.clone());
        let (x, a, b, z) = (0, 1, 2, 3);
        // The path over B is slower: its route is not feasible at X while A's is selected,
        // so the failover needs Z's seqno bumped (a SeqnoRequest round trip).
        for (p, q, ms) in [(x, a, 1), (a, z, 1), (x, b, 20), (b, z, 20)] {
            net.connect(p, q, ms);
        }
        converge(&mut net, Duration::from_secs(10), "two paths");
        // Long enough for the link costs to settle from their start value to the RTTs.
        net.run_for(Duration::from_secs(20));
        let relay = net.next_node(x, z).expect("X reaches Z");
        let other = if relay == a { b } else { a };
        assert!(relay == a || relay == b);
        let start = net.elapsed();
        net.kill(relay);
        let done = net
            .run_until(start + Duration::from_secs(10), |n| {
                n.next_node(x, z) == Some(other) && n.next_node(z, x) == Some(other)
            })
            .expect("X and Z forward over the other relay");
        let took = done - start;
        println!("seed {seed}: failover in {took:?} simulated (hello 300 ms)");
        assert!(took <= Duration::from_secs(2), "seed {seed}: {took:?}");
    }
}
