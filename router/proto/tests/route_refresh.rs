//! A route in constant use must not lapse: remote routes are not announced again, so the
//! reference asks for one again when a packet uses it within 15 s of its expiry (WIRE.md 3.4
//! step 4). The daemon notes the routes its workers used and calls
//! `Router::handle_route_used` for them once a second; here each hop does the same.

#[path = "sim/net.rs"]
#[allow(dead_code)]
mod net;

use std::time::Duration;

use hyphae_proto::babel::Config;
use net::{Net, topo};

/// A flow from node 0 to the last node of a line, a packet every 10 ms for 1,600 s (past the
/// 1,050 s after which an unrefreshed route expires). Each hop forwards it on its route, or
/// holds it and asks for the route (the daemon's `NeedRoute`); with `refresh`, each hop that
/// forwarded reports the route used once a second. Returns how long the flow had no path
/// after its first second, and when that first happened.
fn outage(refresh: bool) -> (Duration, Option<Duration>) {
    let cfg = Config {
        hello_interval: Duration::from_secs(5),
        hash_seed: 7,
        ..Config::default()
    };
    let mut net = Net::new(5, 3, cfg);
    topo::line(&mut net, 20);
    let d = 4;
    let sub = net.nodes[d].subnet;
    let (mut down, mut first_gap) = (Duration::ZERO, None);
    let step = Duration::from_millis(10);
    let mut used = [false; 5];
    for i in 0..160_000u32 {
        let mut cur = 0;
        let ok = loop {
            if cur == d {
                break true;
            }
            let now = net.now;
            match net.next_node(cur, d) {
                Some(nx) => {
                    used[cur] = true;
                    cur = nx;
                }
                None => {
                    net.nodes[cur].router.request_route(now, sub);
                    net.drain(cur);
                    break false;
                }
            }
        };
        if !ok && net.elapsed() > Duration::from_secs(1) {
            down += step;
            first_gap.get_or_insert_with(|| net.elapsed());
        }
        // Once a second, as the daemon's control thread takes its workers' notes.
        if refresh && i % 100 == 0 {
            for (n, u) in used.iter_mut().enumerate() {
                if std::mem::take(u) {
                    let now = net.now;
                    net.nodes[n].router.handle_route_used(now, sub);
                    net.drain(n);
                }
            }
        }
        net.run_for(step);
    }
    (down, first_gap)
}

#[test]
fn a_route_in_constant_use_does_not_lapse() {
    let (down, first) = outage(true);
    assert_eq!(
        down,
        Duration::ZERO,
        "no path for {down:?}, first at {first:?}"
    );
    // And without the refresh it does lapse: the test can tell.
    let (down, first) = outage(false);
    assert!(
        first.is_some_and(|t| t > Duration::from_secs(1000)),
        "without refreshing, the route lapses once it expires: {down:?} from {first:?}"
    );
}
