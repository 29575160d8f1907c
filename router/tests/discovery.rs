//! Link-local peer discovery between two routers in their own network namespaces, joined by a
//! veth pair (made by the test; needs root and iproute2, as CI has). Elsewhere it prints one
//! `SKIPPED:` line and passes, or fails under `HYPHAE_REQUIRE_CAPABILITIES=1`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyphae_test_support::{Capability, require};

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
    let discovered = |r: &Router| r.log().contains("kind=\"linkLocalDiscovery\"");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(discovered(&ra) || discovered(&rb)) && Instant::now() < deadline {
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
