//! hyphae-router's TUN device end to end: nodes in network namespaces joined by veth pairs (TCP
//! peering over ULA addresses, no peer discovery), traffic from the kernel through the TUN of
//! one node to the TUN of another: ping, TCP with every byte checked, UDP sent before any route
//! exists, unknown destinations, foreign sources, shutdown and a TUN that cannot be made.
//!
//! The `stock_*` tests run the same scenarios with stock mycelium 0.7.10 alone: they are the
//! controls that prove the harness (`common/netns.rs`). The others run hyphae, alone or beside
//! stock. Each test needs root and network namespaces, and the stock ones the stock binary;
//! where one is missing it prints one `SKIPPED:` line. Every test has its own namespaces, so
//! the file runs in parallel.

#![cfg(target_os = "linux")]

mod common;

use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::netns::{Kind, Netns, NsNode, identity, tcp_transfer, veth};
use common::wait_until;
use hyphae_test_support::{Capability, require};

use Kind::{Hyphae, HyphaeUring, Stock};

/// The TUN device's name in every namespace.
const TUN: &str = "hyt0";
/// How long routes may take to appear.
const CONVERGE: Duration = Duration::from_secs(20);
/// Bytes each TCP transfer carries.
const TRANSFER: usize = 4 << 20;
/// An address in 400::/7 no node owns.
const UNKNOWN: Ipv6Addr = Ipv6Addr::new(0x5ff, 0x1234, 0, 0, 0, 0, 0, 1);
/// An address in 400::/7 outside every test node's /64, put on a sender's loopback.
const FOREIGN: Ipv6Addr = Ipv6Addr::new(0x5ff, 0, 0, 0, 0, 0, 0, 1);
/// The UDP port test listeners use inside their namespace.
const UDP_PORT: u16 = 7001;

/// Whether `test` can run here: root, network namespaces, the stock binary if a node is
/// stock, and io_uring if a node runs that driver. Prints the `SKIPPED:` line where not.
fn runs(test: &str, kinds: &[Kind]) -> bool {
    require(test, Capability::Root)
        && require(test, Capability::NetNs)
        && (!kinds.contains(&Stock) || require(test, Capability::StockMycelium))
        && (!kinds.contains(&HyphaeUring) || require(test, Capability::IoUring))
}

/// Waits until `a` and `b` each select a route to the other's /64.
#[track_caller]
fn converge(a: &NsNode, b: &NsNode) {
    wait_until(CONVERGE, || {
        a.has_route(&b.subnet) && b.has_route(&a.subnet)
    })
    .unwrap_or_else(|| {
        panic!(
            "no routes between {} and {} within {CONVERGE:?}: {} has {:?}, {} has {:?}",
            a.name,
            b.name,
            a.name,
            a.routes(),
            b.name,
            b.routes()
        )
    });
}

/// A `listener` node and a `dialer` node in two namespaces joined by a veth; the dialer peers
/// with the listener over TCP. Returns them once each has the other's route.
fn pair(listener: Kind, dialer: Kind) -> (NsNode, NsNode) {
    let (na, nb) = (Netns::new("a"), Netns::new("b"));
    let link = veth(&na, &nb);
    let a = NsNode::start(&na, listener, "a", 11, TUN, &[]);
    let b = NsNode::start(&nb, dialer, "b", 12, TUN, &[link.tcp_a()]);
    converge(&a, &b);
    (a, b)
}

/// One node alone in a namespace.
fn single(kind: Kind) -> NsNode {
    NsNode::start(&Netns::new("solo"), kind, "solo", 13, TUN, &[])
}

/// Pings `a` -> `b` and `b` -> `a`: a first ping that may wait for its route (20 s), then
/// three that must all be answered.
#[track_caller]
fn pings_both_ways(a: &NsNode, b: &NsNode) {
    for (x, y) in [(a, b), (b, a)] {
        let first = x.ping(y.address, &["-c", "1", "-W", "20"]);
        assert!(
            first.ok,
            "{} -> {}: the first ping is answered:\n{}",
            x.name, y.name, first.output
        );
        let p = x.ping(y.address, &["-c", "3", "-i", "0.2", "-W", "2"]);
        assert_eq!(
            (p.transmitted, p.received),
            (3, 3),
            "{} -> {}: three pings, three answers:\n{}",
            x.name,
            y.name,
            p.output
        );
    }
}

/// 4 MiB over TCP `a` -> `b` and `b` -> `a`, every byte checked.
#[track_caller]
fn transfers_both_ways(a: &NsNode, b: &NsNode) {
    for (x, y) in [(a, b), (b, a)] {
        let t = Instant::now();
        tcp_transfer(x, y, TRANSFER, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "{} -> {}: {TRANSFER} bytes over TCP in {:?}",
            x.name,
            y.name,
            t.elapsed()
        );
    }
}

/// Nodes of `kinds` in a chain of namespaces, each dialing the one before it over a veth. The
/// first node sends a UDP datagram to the last node's overlay address before the last node
/// runs, so no router has a route to it yet (the kernel hands it to the first node's TUN all
/// the same: 400::/7 goes there). Then the last node starts: the datagram must arrive, from
/// the first node's address, and the answer the last node sends right away must get back.
/// Returns the nodes, first to last, all running.
fn first_packet_before_route(kinds: &[Kind]) -> Vec<NsNode> {
    assert!(kinds.len() >= 2);
    let ns: Vec<Netns> = (0..kinds.len())
        .map(|i| Netns::new(&format!("n{i}")))
        .collect();
    let links: Vec<_> = ns.windows(2).map(|w| veth(&w[0], &w[1])).collect();
    let seed = |i: usize| 21 + u8::try_from(i).unwrap();
    let start = |i: usize| {
        let peers: Vec<String> = i
            .checked_sub(1)
            .map(|p| links[p].tcp_a())
            .into_iter()
            .collect();
        NsNode::start(&ns[i], kinds[i], &format!("n{i}"), seed(i), TUN, &peers)
    };
    let last = kinds.len() - 1;
    let mut nodes: Vec<NsNode> = (0..last).map(start).collect();
    for w in nodes.windows(2) {
        converge(&w[0], &w[1]);
    }
    let late = identity(seed(last));
    let first = &nodes[0];
    assert!(
        !first.has_route(&late.subnet().to_string()),
        "nobody has announced {} yet",
        late.subnet()
    );

    let bind = |ns: &Netns, addr: Ipv6Addr, port: u16| {
        let s = ns
            .run(|| UdpSocket::bind((addr, port)))
            .unwrap_or_else(|e| panic!("UDP bind in {}: {e}", ns.name()));
        s.set_read_timeout(Some(Duration::from_secs(25))).unwrap();
        s
    };
    let listener = bind(&ns[last], Ipv6Addr::UNSPECIFIED, UDP_PORT);
    let sender = bind(&first.ns, Ipv6Addr::UNSPECIFIED, 0);
    let question = b"sent before any route existed";
    let sent = Instant::now();
    sender
        .send_to(question, (late.address(), UDP_PORT))
        .expect("the kernel takes the datagram: 400::/7 goes into the TUN");

    nodes.push(start(last));
    let (first, late) = (&nodes[0], &nodes[last]);
    let mut buf = [0u8; 1500];
    let (n, from) = listener.recv_from(&mut buf).unwrap_or_else(|e| {
        panic!(
            "{}: the datagram {} sent before its route existed did not arrive ({e})",
            late.name, first.name
        )
    });
    assert_eq!(&buf[..n], question);
    assert_eq!(
        from.ip(),
        first.address,
        "from {}'s overlay address",
        first.name
    );
    eprintln!(
        "{} -> {}: the datagram sent before the route arrived after {:?}",
        first.name,
        late.name,
        sent.elapsed()
    );

    let knew = late.has_route(&first.subnet);
    let answer = b"answer";
    listener.send_to(answer, from).unwrap();
    let (n, from) = sender.recv_from(&mut buf).unwrap_or_else(|e| {
        panic!(
            "{}: the answer of {} (route to {} known when sent: {knew}) did not arrive ({e})",
            first.name, late.name, first.name
        )
    });
    assert_eq!(&buf[..n], answer);
    assert_eq!(from, SocketAddr::from((late.address, UDP_PORT)));
    nodes
}

/// A packet to an address in 400::/7 nobody owns is answered with ICMPv6 destination
/// unreachable (after the router gave up waiting for a route: up to ~15 s).
fn unknown_destination(a_kind: Kind, b_kind: Kind) {
    let (a, _b) = pair(a_kind, b_kind);
    let t = Instant::now();
    let p = a.ping(UNKNOWN, &["-c", "1", "-W", "25"]);
    eprintln!("unreachable after {:?}:\n{}", t.elapsed(), p.output);
    assert!(
        !p.ok && p.received == 0,
        "nobody answers for {UNKNOWN}:\n{}",
        p.output
    );
    assert!(
        p.output.contains("Destination unreachable"),
        "{} answers the ping to {UNKNOWN} with destination unreachable:\n{}",
        a.name,
        p.output
    );
}

/// The node makes its TUN as stock does: type tun without packet information, MTU 1400, up,
/// its address with prefix length 7, so that 400::/7 routes into it.
fn tun_device(kind: Kind) {
    let n = single(kind);
    let link = n.tun_link().expect("the TUN exists");
    let info = &link["linkinfo"];
    assert_eq!(info["info_kind"], "tun", "{link}");
    assert_eq!(info["info_data"]["type"], "tun", "{link}");
    assert_eq!(info["info_data"]["pi"], false, "{link}");
    assert_eq!(link["mtu"], 1400, "{link}");
    assert!(
        link["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "UP")),
        "{link}"
    );
    if kind.is_hyphae() {
        assert_eq!(
            info["info_data"]["multi_queue"], true,
            "one queue per worker: {link}"
        );
    }
    assert!(
        n.tun_addresses()
            .contains(&(n.address, 7, "global".to_owned())),
        "{:?}",
        n.tun_addresses()
    );
    let routes = n.ns.ip_json(&["-6", "route", "show", "400::/7"]);
    assert!(
        routes
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["dev"] == TUN)),
        "400::/7 goes into {TUN}: {routes}"
    );
}

/// SIGTERM ends the node; its TUN is gone from the namespace afterwards.
fn sigterm_removes_tun(kind: Kind) {
    let mut n = single(kind);
    assert!(n.tun_exists());
    let status = n.terminate();
    eprintln!("{} ({kind:?}) exited with {status} on SIGTERM", n.name);
    if kind.is_hyphae() {
        assert!(status.success(), "a clean exit: {status}\n{}", n.log());
    }
    // An io_uring ring's references to the TUN descriptors go in a kernel worker after the
    // ring closes: allow a loaded machine some seconds.
    wait_until(Duration::from_secs(10), || !n.tun_exists())
        .unwrap_or_else(|| panic!("{TUN} outlives the node: {:?}", n.tun_link()));
    assert!(n.ns.try_ip(&["link", "show", TUN]).is_err());
}

/// With a device named like the TUN already there (`blocker` makes it), the node exits with
/// status 1 after exactly one ERROR line naming the device, and leaves the device alone.
fn tun_name_in_use(kind: Kind, blocker: &[&str]) {
    let ns = Netns::new("busy");
    ns.ip(blocker);
    let kind_before = ns.ip_json(&["-d", "link", "show", TUN])[0]["linkinfo"]["info_kind"].clone();
    let mut n = NsNode::spawn(&ns, kind, "busy", 14, TUN, &[]);
    let status = n
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("{kind:?} keeps running without its TUN:\n{}", n.log()));
    let log = n.log();
    assert_eq!(status.code(), Some(1), "exit status 1:\n{log}");
    let errors = n.error_lines();
    assert_eq!(
        errors.len(),
        1,
        "exactly one ERROR line: {errors:#?}\n{log}"
    );
    assert!(
        errors[0].contains(TUN),
        "the ERROR line names the device: {}",
        errors[0]
    );
    if kind.is_hyphae() {
        assert!(
            n.stderr().contains(&errors[0]),
            "the ERROR line is on stderr:\n{log}"
        );
    }
    assert!(!log.contains("panicked"), "{log}");
    let kind_after = ns.ip_json(&["-d", "link", "show", TUN])[0]["linkinfo"]["info_kind"].clone();
    assert_eq!(kind_before, kind_after, "the other device is left alone");
}

/// Two nodes over one veth: ping and TCP both ways.
fn pair_traffic(listener: Kind, dialer: Kind) -> (NsNode, NsNode) {
    let (a, b) = pair(listener, dialer);
    pings_both_ways(&a, &b);
    transfers_both_ways(&a, &b);
    (a, b)
}

/// Three nodes in a chain, the ends not linked: the first packet before the route, then ping
/// and TCP between the ends.
fn chain_traffic(kinds: [Kind; 3]) {
    let nodes = first_packet_before_route(&kinds);
    pings_both_ways(&nodes[0], &nodes[2]);
    transfers_both_ways(&nodes[0], &nodes[2]);
    hop_limit_error_from_the_middle(&nodes);
}

/// A ping from the first node to the last with hop limit 2 dies at the middle node, which can
/// not read it and reports it out of band (sealed for the first node); the first node turns
/// that back into an ICMPv6 Time Exceeded from the middle node, whose errors come from the
/// first address of its /64 (stock's choice, which hyphae follows).
#[track_caller]
fn hop_limit_error_from_the_middle(nodes: &[NsNode]) {
    let (first, middle, last) = (&nodes[0], &nodes[1], &nodes[2]);
    let p = first.ping(last.address, &["-c", "1", "-t", "2", "-W", "5"]);
    assert_eq!(
        p.received, 0,
        "hop limit 2 cannot reach the far end:\n{}",
        p.output
    );
    let reporter = Ipv6Addr::from(u128::from(middle.address) >> 64 << 64);
    let from_middle = format!("From {reporter} icmp_seq=1 Time exceeded: Hop limit");
    assert!(
        p.output.contains(&from_middle),
        "{} gets Time Exceeded from {} ({reporter}):\n{}",
        first.name,
        middle.name,
        p.output
    );
}

/// A packet read from A's TUN whose source is outside A's /64 (an address on A's loopback, in
/// 400::/7) goes nowhere: B hears nothing of it. hyphae also counts it in
/// `hyphae_drop_tun_foreign_source_total`.
fn foreign_source(kind: Kind) {
    const METRIC: &str = "hyphae_drop_tun_foreign_source_total";
    let (a, b) = pair(kind, kind);
    a.ns.ip(&[
        "addr",
        "add",
        &format!("{FOREIGN}/128"),
        "dev",
        "lo",
        "nodad",
    ]);
    let counted = || {
        a.metric_sum(METRIC)
            .unwrap_or_else(|| panic!("{} exposes {METRIC}", a.name))
    };
    let before = (kind.is_hyphae()).then(counted);
    let bind = |n: &NsNode, addr: Ipv6Addr, port: u16| {
        n.ns.run(|| UdpSocket::bind((addr, port)))
            .unwrap_or_else(|e| panic!("UDP bind [{addr}]:{port} in {}: {e}", n.name))
    };
    let listener = bind(&b, Ipv6Addr::UNSPECIFIED, UDP_PORT);
    let foreign = bind(&a, FOREIGN, 0);
    for _ in 0..3 {
        foreign
            .send_to(b"foreign", (b.address, UDP_PORT))
            .expect("the kernel takes it: 400::/7 goes into the TUN");
    }
    let p = a.ping(
        b.address,
        &[
            "-I",
            &FOREIGN.to_string(),
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
        ],
    );
    assert_eq!(
        (p.transmitted, p.received),
        (3, 0),
        "pings from {FOREIGN} leave and nothing answers:\n{}",
        p.output
    );
    if let Some(before) = before {
        wait_until(Duration::from_secs(10), || counted() >= before + 6).unwrap_or_else(|| {
            panic!(
                "{METRIC} counts the 3 datagrams and 3 pings: {before} before, {} now",
                counted()
            )
        });
    }

    // B hears nothing from FOREIGN: a datagram from A's own address, sent after the foreign
    // ones, arrives, and nothing else does (for half a second more).
    let own = bind(&a, a.address, 0);
    listener
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut heard = Vec::new();
    let mut marker_at: Option<Instant> = None;
    while marker_at.is_none_or(|t| t.elapsed() < Duration::from_millis(500)) {
        assert!(
            Instant::now() < deadline,
            "{}: a datagram from {}'s own address arrives",
            b.name,
            a.name
        );
        if marker_at.is_none() {
            own.send_to(b"marker", (b.address, UDP_PORT)).unwrap();
        }
        let mut buf = [0u8; 1500];
        if let Ok((n, from)) = listener.recv_from(&mut buf) {
            if &buf[..n] == b"marker" && marker_at.is_none() {
                marker_at = Some(Instant::now());
            }
            heard.push((String::from_utf8_lossy(&buf[..n]).into_owned(), from.ip()));
        }
    }
    assert!(
        heard
            .iter()
            .all(|(what, from)| what == "marker" && *from == a.address),
        "{} hears only the marker from {}: {heard:?}",
        b.name,
        a.address
    );
}

// Controls: stock mycelium alone proves the harness and the expectations.

#[test]
fn stock_pair_control() {
    if runs("stock_pair_control", &[Stock]) {
        pair_traffic(Stock, Stock);
    }
}

#[test]
fn stock_chain_control() {
    if runs("stock_chain_control", &[Stock]) {
        chain_traffic([Stock, Stock, Stock]);
    }
}

#[test]
fn stock_first_packet_control() {
    if runs("stock_first_packet_control", &[Stock]) {
        first_packet_before_route(&[Stock, Stock]);
    }
}

#[test]
fn stock_unknown_destination_control() {
    if runs("stock_unknown_destination_control", &[Stock]) {
        unknown_destination(Stock, Stock);
    }
}

#[test]
fn stock_tun_device_control() {
    if runs("stock_tun_device_control", &[Stock]) {
        tun_device(Stock);
    }
}

#[test]
fn stock_sigterm_control() {
    if runs("stock_sigterm_control", &[Stock]) {
        sigterm_removes_tun(Stock);
    }
}

#[test]
fn stock_foreign_source_control() {
    if runs("stock_foreign_source_control", &[Stock]) {
        foreign_source(Stock);
    }
}

#[test]
fn stock_tun_name_in_use_control() {
    if runs("stock_tun_name_in_use_control", &[Stock]) {
        tun_name_in_use(
            Stock,
            &[
                "link",
                "add",
                TUN,
                "type",
                "veth",
                "peer",
                "name",
                "hyt0-peer",
            ],
        );
    }
}

// hyphae.

/// Ping and TCP both ways between two `kind` nodes, every packet counted read from and
/// written to the devices, and no write to a device failed.
fn counted_pair_traffic(kind: Kind) {
    let (a, b) = pair_traffic(kind, kind);
    for n in [&a, &b] {
        for metric in ["hyphae_tun_read_total", "hyphae_tun_written_total"] {
            let v = n.metric_sum(metric);
            assert!(
                v.is_some_and(|v| v >= 4),
                "{}: {metric} counts at least the 4 pings each way: {v:?}",
                n.name
            );
        }
        let failed = n.metric_sum("hyphae_drop_tun_write_total");
        assert_eq!(failed, Some(0), "{}: no TUN write failed", n.name);
    }
}

#[test]
fn hyphae_pair_ping_and_tcp() {
    if runs("hyphae_pair_ping_and_tcp", &[Hyphae]) {
        counted_pair_traffic(Hyphae);
    }
}

#[test]
fn hyphae_tun_device_like_stock() {
    if runs("hyphae_tun_device_like_stock", &[Hyphae]) {
        tun_device(Hyphae);
    }
}

#[test]
fn hyphae_first_packet_waits_for_route() {
    if runs("hyphae_first_packet_waits_for_route", &[Hyphae]) {
        let nodes = first_packet_before_route(&[Hyphae, Hyphae]);
        pings_both_ways(&nodes[0], &nodes[1]);
    }
}

#[test]
fn hyphae_first_packet_waits_for_route_two_hops() {
    if runs("hyphae_first_packet_waits_for_route_two_hops", &[Hyphae]) {
        chain_traffic([Hyphae, Hyphae, Hyphae]);
    }
}

#[test]
fn hyphae_unknown_destination_unreachable() {
    if runs("hyphae_unknown_destination_unreachable", &[Hyphae]) {
        unknown_destination(Hyphae, Hyphae);
    }
}

#[test]
fn hyphae_foreign_source_dropped_and_counted() {
    if runs("hyphae_foreign_source_dropped_and_counted", &[Hyphae]) {
        foreign_source(Hyphae);
    }
}

#[test]
fn hyphae_sigterm_removes_tun() {
    if runs("hyphae_sigterm_removes_tun", &[Hyphae]) {
        sigterm_removes_tun(Hyphae);
    }
}

#[test]
fn hyphae_tun_name_in_use_fails() {
    if !runs("hyphae_tun_name_in_use_fails", &[Hyphae]) {
        return;
    }
    // Another kind of device with the name, and a single-queue TUN with it.
    tun_name_in_use(
        Hyphae,
        &[
            "link",
            "add",
            TUN,
            "type",
            "veth",
            "peer",
            "name",
            "hyt0-peer",
        ],
    );
    tun_name_in_use(Hyphae, &["tuntap", "add", "dev", TUN, "mode", "tun"]);
}

#[test]
fn hyphae_dials_stock() {
    if runs("hyphae_dials_stock", &[Hyphae, Stock]) {
        pair_traffic(Stock, Hyphae);
    }
}

#[test]
fn stock_dials_hyphae() {
    if runs("stock_dials_hyphae", &[Hyphae, Stock]) {
        pair_traffic(Hyphae, Stock);
    }
}

#[test]
fn hyphae_stock_hyphae_chain() {
    if runs("hyphae_stock_hyphae_chain", &[Hyphae, Stock]) {
        chain_traffic([Hyphae, Stock, Hyphae]);
    }
}

// hyphae on the io_uring driver: its links and TUN queues on the workers' rings.

#[test]
fn hyphae_uring_pair_ping_and_tcp() {
    if runs("hyphae_uring_pair_ping_and_tcp", &[HyphaeUring]) {
        counted_pair_traffic(HyphaeUring);
    }
}

#[test]
fn hyphae_uring_and_portable_pair() {
    if runs("hyphae_uring_and_portable_pair", &[HyphaeUring]) {
        pair_traffic(Hyphae, HyphaeUring);
    }
}

#[test]
fn hyphae_uring_first_packet_waits_for_route_two_hops() {
    if runs(
        "hyphae_uring_first_packet_waits_for_route_two_hops",
        &[HyphaeUring],
    ) {
        chain_traffic([HyphaeUring, HyphaeUring, HyphaeUring]);
    }
}

#[test]
fn hyphae_uring_unknown_destination_unreachable() {
    if runs(
        "hyphae_uring_unknown_destination_unreachable",
        &[HyphaeUring],
    ) {
        unknown_destination(HyphaeUring, HyphaeUring);
    }
}

#[test]
fn hyphae_uring_foreign_source_dropped_and_counted() {
    if runs(
        "hyphae_uring_foreign_source_dropped_and_counted",
        &[HyphaeUring],
    ) {
        foreign_source(HyphaeUring);
    }
}

#[test]
fn hyphae_uring_sigterm_removes_tun() {
    if runs("hyphae_uring_sigterm_removes_tun", &[HyphaeUring]) {
        sigterm_removes_tun(HyphaeUring);
    }
}

#[test]
fn hyphae_uring_stock_hyphae_uring_chain() {
    if runs(
        "hyphae_uring_stock_hyphae_uring_chain",
        &[HyphaeUring, Stock],
    ) {
        chain_traffic([HyphaeUring, Stock, HyphaeUring]);
    }
}
