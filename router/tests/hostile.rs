//! What one hostile peer can make a node do, each attack with the bound the node keeps (issue
//! "hardening"). Every test here failed on the code before the bound was added.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{FakePeer, Node, http, wait_until};
use hyphae_wire::babel::{RouteRequest, Tlv};
use hyphae_wire::identity::SecretKey;

/// Resident memory of process `pid`, bytes (from /proc).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// The value of an unlabelled metric on the node's metrics endpoint.
fn metric(addr: std::net::SocketAddr, name: &str) -> u64 {
    let (_, body) = http(addr, "GET", "/metrics", None).expect("metrics answer");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in:\n{body}"))
}

/// A peer that never reads what the node sends and streams RouteRequests for the node's own
/// /64 (each asks for an Update back) for 4 s. Before the bound the answers piled up in the
/// node without limit (1.79 GB after 6 s); now a peer's answers are limited per second, the
/// rest are counted, and the node's memory stays where it was.
#[test]
fn route_requests_from_a_peer_that_never_reads_are_bounded() {
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let node = Node::start(
        "target",
        "portable",
        51,
        &["--metrics-api-address".into(), metrics.clone()],
    );
    let metrics = metrics.parse().unwrap();
    let own = SecretKey::from_bytes([51; 32]).public_key().subnet();
    // The attacker's socket reads nothing and its receive buffer is tiny, so whatever the node
    // answers stays with the node.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], node.port)).into())
        .unwrap();
    let mut attacker = FakePeer::from_stream(TcpStream::from(sock), 52);
    attacker.announce();
    wait_until(Duration::from_secs(10), || {
        node.get("/api/v1/admin/peers")
            .as_array()
            .is_some_and(|p| !p.is_empty())
    })
    .expect("the attacker is a peer");
    std::thread::sleep(Duration::from_millis(300));
    let before = rss(node.child.id());

    let mut burst = Vec::new();
    for _ in 0..1000 {
        Tlv::RouteRequest(RouteRequest {
            generation: 0,
            prefix: Some(own),
        })
        .encode_frame(&mut burst);
    }
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(4) {
        if attacker.stream.write_all(&burst).is_err() {
            break;
        }
        sent += 1000;
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss(node.child.id());
    let limited = metric(metrics, "hyphae_answers_rate_limited_total");
    eprintln!(
        "{sent} requests sent; RSS {} -> {} KiB; {limited} left unanswered",
        before / 1024,
        after / 1024
    );
    assert!(sent >= 100_000, "the flood got through: {sent} requests");
    assert!(
        after.saturating_sub(before) <= 8 << 20,
        "RSS grew by {} KiB (bound: 8 MiB)",
        (after - before) / 1024
    );
    assert!(
        limited >= sent / 2,
        "most requests are counted as unanswered: {limited} of {sent}"
    );
    // The node still serves: its API answers and it still has the attacker as a peer or
    // closed the link, but it is alive.
    assert!(node.info()["nodeSubnet"].is_string());
}
