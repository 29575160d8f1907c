//! Link-local peer discovery between two routers in their own network namespaces, joined by a
//! veth pair (made by the test; needs root and iproute2, as CI has). Elsewhere it prints one
//! `SKIPPED:` line and passes, or fails under `HYPHAE_REQUIRE_CAPABILITIES=1`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyphae_test_support::{Capability, require};

mod common;

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 is installed");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

struct Router {
    child: Child,
    log: std::path::PathBuf,
}

impl Router {
    fn start(ns: &str, dir: &std::path::Path, seed: u8) -> Self {
        let key = dir.join(format!("{ns}.key"));
        std::fs::write(&key, [seed; 32]).unwrap();
        let log = dir.join(format!("{ns}.log"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_hyphae-router")])
            .args([
                "-k",
                key.to_str().unwrap(),
                "--disable-quic",
                "--no-tun",
                "--workers",
                "1",
            ])
            .arg("--local-socket")
            .arg(key.with_extension("sock"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&self, what: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.log().contains(what) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn routers_on_one_link_discover_each_other_and_peer() {
    if !require(
        "routers_on_one_link_discover_each_other_and_peer",
        Capability::NetNs,
    ) {
        return;
    }
    let tag = std::process::id() % 100_000;
    let (a, b) = (format!("hya{tag}"), format!("hyb{tag}"));
    let _ns = Netns(vec![a.clone(), b.clone()]);
    ip(&["netns", "add", &a]);
    ip(&["netns", "add", &b]);
    let (va, vb) = (format!("hyva{tag}"), format!("hyvb{tag}"));
    ip(&[
        "link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b,
    ]);
    for (ns, dev, addr) in [(&a, &va, "fe80::a/64"), (&b, &vb, "fe80::b/64")] {
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["-n", ns, "addr", "add", addr, "dev", dev, "nodad"]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
    let dir = std::env::temp_dir().join(format!("hyphae-disc-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let ra = Router::start(&a, &dir, 81);
    assert!(
        ra.wait_for("peer discovery listening"),
        "a listens: {}",
        ra.log()
    );
    // Each beacons at start, again after 5 s, then every 60 s; whichever hears the other first
    // dials it over TCP on the link-local address.
    let rb = Router::start(&b, &dir, 82);
    // Until one has dialed and the other has taken the link (it logs that a moment after the
    // dialer's connect returns, so both are waited for).
    let discovered = |r: &Router| r.log().contains("kind=\"linkLocalDiscovery\"");
    let accepted = |r: &Router| r.log().contains("kind=\"inbound\"");
    let linked = || (discovered(&ra) && accepted(&rb)) || (discovered(&rb) && accepted(&ra));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !linked() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (la, lb) = (ra.log(), rb.log());
    drop((ra, rb));
    let _ = std::fs::remove_dir_all(&dir);
    let (dialer, other) = match (
        la.contains("kind=\"linkLocalDiscovery\""),
        lb.contains("kind=\"linkLocalDiscovery\""),
    ) {
        (true, _) => (&la, &lb),
        (_, true) => (&lb, &la),
        _ => panic!("neither router discovered the other\n--- a ---\n{la}\n--- b ---\n{lb}"),
    };
    assert!(
        dialer.contains("discovered a peer on the local link"),
        "{dialer}"
    );
    assert!(
        dialer.contains("kind=\"linkLocalDiscovery\"") && dialer.contains("endpoint=tcp://[fe80::"),
        "dialed the beacon's link-local source: {dialer}"
    );
    assert!(
        other.contains("kind=\"inbound\""),
        "the other side accepted the link: {other}"
    );
}

/// Beacons from more link-local addresses than `--max-discovered-peers` allows: the node keeps
/// that many discovered peers and ignores, counts and logs the rest. Before the cap every
/// beacon from a new address added a peer to dial, so a host on the link could make the node
/// hold and dial any number of them.
#[test]
fn discovered_peers_are_capped() {
    if !require("discovered_peers_are_capped", Capability::NetNs) {
        return;
    }
    use common::netns::{Netns, veth};
    let (a, b) = (Netns::new("dcapa"), Netns::new("dcapb"));
    let link = veth(&a, &b);
    let dir = std::env::temp_dir().join(format!("{}-disc", a.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key");
    std::fs::write(&key, [83u8; 32]).unwrap();
    let log = dir.join("log");
    let mut child = a
        .command(env!("CARGO_BIN_EXE_hyphae-router"))
        .args(["-k", key.to_str().unwrap(), "--disable-quic", "--no-tun"])
        .args(["--workers", "1", "--max-discovered-peers", "2"])
        .args(["--metrics-api-address", "127.0.0.1:8991"])
        .arg("--local-socket")
        .arg(dir.join("sock"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let metric = |name: &str| -> Option<u64> {
        let (_, body) =
            a.run(|| common::http("127.0.0.1:8991".parse().unwrap(), "GET", "/metrics", None))?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    common::wait_until(Duration::from_secs(15), || {
        read_log()
            .contains("peer discovery listening")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("discovery did not start: {}", read_log()));
    // Six hosts on B's side of the link, each beaconing once; nothing listens on their port,
    // so the node's dials fail and it keeps retrying the ones it took.
    let ifindex = b.ip_json(&["link", "show", "dev", &link.b_dev])[0]["ifindex"]
        .as_u64()
        .unwrap() as u32;
    for i in 1..=6u16 {
        let addr: std::net::Ipv6Addr = format!("fe80::b:{i}").parse().unwrap();
        b.ip(&[
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            &link.b_dev,
            "nodad",
        ]);
        let mut beacon = [0u8; 50];
        beacon[..8].copy_from_slice(b"mycelium");
        beacon[8..10].copy_from_slice(&9999u16.to_be_bytes());
        beacon[10..].fill(i as u8);
        b.run(|| {
            let s = std::net::UdpSocket::bind(std::net::SocketAddrV6::new(addr, 0, 0, ifindex))
                .unwrap();
            let group =
                std::net::SocketAddrV6::new("ff02::cafe".parse().unwrap(), 9650, 0, ifindex);
            s.send_to(&beacon, group).unwrap();
        });
    }
    common::wait_until(Duration::from_secs(10), || {
        (metric("hyphae_discovered_refused_total") == Some(4)).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{:?} refused: {}",
            metric("hyphae_discovered_refused_total"),
            read_log()
        )
    });
    let l = read_log();
    assert_eq!(
        l.matches("discovered a peer on the local link").count(),
        2,
        "two taken: {l}"
    );
    assert_eq!(
        l.matches("--max-discovered-peers reached").count(),
        1,
        "logged once: {l}"
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
