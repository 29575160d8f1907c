//! Capability checks for hyphae's tests.
//!
//! A test that needs something a developer's machine may lack (root, io_uring, network
//! namespaces, the stock mycelium binary) asks [`require`] first:
//!
//! ```no_run
//! use hyphae_test_support::{Capability, require};
//!
//! fn routers_in_two_namespaces() {
//!     if !require("routers_in_two_namespaces", Capability::NetNs) {
//!         return;
//!     }
//!     // ip netns add, a veth pair, one router in each namespace ...
//! }
//! ```
//!
//! Where the capability is here, `require` returns `true` and the test goes on. Where it is
//! missing, `require` writes one line to standard error and returns `false`, so the test
//! returns early and passes:
//!
//! ```text
//! SKIPPED: routers_in_two_namespaces: needs network namespaces, which need root (running as uid 1000)
//! ```
//!
//! The line goes straight to file descriptor 2, not through `eprintln!`: libtest captures what
//! `print!` and `eprint!` write and drops it when the test passes, so a skip would otherwise
//! vanish from `cargo test` output.
//!
//! With [`REQUIRE_VAR`] (`HYPHAE_REQUIRE_CAPABILITIES`) set to anything but empty or `0`, a
//! missing capability fails the test instead, with the same reason. `.ci/run`, which runs as
//! root on a host with io_uring, sets it, so CI never skips.
//!
//! Every probe is real (an `io_uring_setup(2)` call, a scratch network namespace holding a veth
//! pair, ...) and runs at most once per process. Non-goals: emulating a missing capability,
//! finding out the calling test's name, hosts other than Linux (there io_uring and network
//! namespaces read as missing).

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

mod missing;
mod probe;

pub use missing::Missing;

/// The environment variable that turns a missing capability from a skip into a failure when it
/// holds anything but an empty string or `0`. `.ci/run` sets it to `1`.
pub const REQUIRE_VAR: &str = "HYPHAE_REQUIRE_CAPABILITIES";

/// The environment variable naming the stock mycelium 0.7.10 binary (see [`stock_mycelium`]).
pub const STOCK_MYCELIUM_VAR: &str = "HYPHAE_STOCK_MYCELIUM";

/// Something a test needs from the machine it runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Capability {
    /// Effective uid 0.
    Root,
    /// io_uring: the kernel sets up a ring of the size the router's `uring` driver builds (no
    /// `kernel.io_uring_disabled`, seccomp filter or old kernel stands in the way).
    IoUring,
    /// Network namespaces joined by veth pairs, made with iproute2's `ip`: root, and a scratch
    /// namespace with a veth pair in it can be added (and is deleted again).
    NetNs,
    /// The stock mycelium 0.7.10 binary at [`stock_mycelium`] is a file this process may run.
    StockMycelium,
}

impl Capability {
    /// Whether the capability is here, and if not, why. Probes once per process; later calls
    /// return the first answer.
    pub fn probe(self) -> Result<(), Missing> {
        static PROBED: [OnceLock<Result<(), Missing>>; 4] = [const { OnceLock::new() }; 4];
        PROBED[self as usize]
            .get_or_init(|| match self {
                Self::Root => probe::root(),
                Self::IoUring => probe::io_uring(),
                Self::NetNs => probe::netns(),
                Self::StockMycelium => stock_mycelium_at(&stock_mycelium()),
            })
            .clone()
    }
}

/// Whether `test` may go on: `true` where `capability` is here. Where it is missing, writes
/// `SKIPPED: <test>: <reason>` to standard error (file descriptor 2, past libtest's capture) and
/// returns `false`, so the test returns early and passes.
///
/// # Panics
///
/// Where the capability is missing and [`strict`] holds ([`REQUIRE_VAR`] is set): the test
/// fails with the reason.
#[track_caller]
pub fn require(test: &str, capability: Capability) -> bool {
    decide(test, capability.probe(), strict(), &mut std::io::stderr())
}

/// Whether missing capabilities fail tests: [`REQUIRE_VAR`] is set to anything but an empty
/// string or `0`.
pub fn strict() -> bool {
    strict_value(std::env::var_os(REQUIRE_VAR).as_deref())
}

/// The decision [`require`] makes, given the probe's answer, whether [`strict`] holds, and where
/// the SKIPPED line goes (`require` passes standard error).
///
/// # Panics
///
/// When `probe` is `Err` and `strict` is true, or when `out` refuses the line (a skip nobody can
/// see must not pass).
#[track_caller]
pub fn decide(test: &str, probe: Result<(), Missing>, strict: bool, out: &mut impl Write) -> bool {
    let Err(missing) = probe else {
        return true;
    };
    if strict {
        panic!("{test}: {missing} ({REQUIRE_VAR} is set: a missing capability fails the test)");
    }
    // The whole line in one write, so that lines of tests running in parallel don't interleave.
    out.write_all(format!("SKIPPED: {test}: {missing}\n").as_bytes())
        .expect("the SKIPPED line is written");
    false
}

/// Where the stock mycelium 0.7.10 binary is: [`STOCK_MYCELIUM_VAR`] when set and not empty,
/// else `shared/bin/mycelium-0.7.10` beside the workspace (`../shared/bin/` from its root, where
/// `.ci/run` looks too).
pub fn stock_mycelium() -> PathBuf {
    match std::env::var_os(STOCK_MYCELIUM_VAR) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
            let beside = crate_dir
                .parent()
                .and_then(Path::parent)
                .unwrap_or(crate_dir);
            beside.join("shared/bin/mycelium-0.7.10")
        }
    }
}

fn stock_mycelium_at(path: &Path) -> Result<(), Missing> {
    probe::executable(path).map_err(|why| {
        Missing::new(format!(
            "needs the stock mycelium 0.7.10 binary: {why} (set {STOCK_MYCELIUM_VAR})"
        ))
    })
}

fn strict_value(v: Option<&OsStr>) -> bool {
    v.is_some_and(|v| !v.is_empty() && v != "0")
}

/// A port free on this host for TCP on `127.0.0.1` and `[::]` and for UDP on `[::]`, for a node
/// under test to bind its peer listeners (TCP and QUIC share one number) or an API. Another
/// process may take it before the test binds it; tests that start routers retry or tolerate
/// that.
pub fn free_port() -> u16 {
    use std::net::{Ipv6Addr, TcpListener, UdpSocket};
    loop {
        let port = match TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0)).and_then(|l| l.local_addr())
        {
            Ok(a) => a.port(),
            Err(e) => panic!("no free port: {e}"),
        };
        if UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

/// Both ends of a TCP connection over `127.0.0.1`: the connecting one first.
pub fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    use std::net::{TcpListener, TcpStream};
    let l = TcpListener::bind("127.0.0.1:0").expect("a listener on 127.0.0.1");
    let a = TcpStream::connect(l.local_addr().expect("its address")).expect("connect");
    let (b, _) = l.accept().expect("accept");
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing() -> Result<(), Missing> {
        Err(Missing::new("needs a thing (it is not here)"))
    }

    #[test]
    fn a_present_capability_goes_on_and_prints_nothing() {
        let mut out = Vec::new();
        assert!(decide("t", Ok(()), false, &mut out));
        assert!(decide("t", Ok(()), true, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn a_missing_capability_skips_with_one_line() {
        let mut out = Vec::new();
        assert!(!decide("mod_a::test_b", missing(), false, &mut out));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "SKIPPED: mod_a::test_b: needs a thing (it is not here)\n"
        );
    }

    #[test]
    #[should_panic(
        expected = "mod_a::test_b: needs a thing (it is not here) (HYPHAE_REQUIRE_CAPABILITIES is \
                    set: a missing capability fails the test)"
    )]
    fn a_missing_capability_fails_when_strict() {
        decide("mod_a::test_b", missing(), true, &mut Vec::new());
    }

    #[test]
    fn strict_is_anything_but_unset_empty_or_zero() {
        for (v, want) in [(None, false), (Some(""), false), (Some("0"), false)] {
            assert_eq!(strict_value(v.map(OsStr::new)), want, "{v:?}");
        }
        for v in ["1", "yes", "true"] {
            assert!(strict_value(Some(OsStr::new(v))), "{v}");
        }
    }

    #[test]
    fn a_reason_is_always_one_line() {
        let m = Missing::new("`ip netns add x`: first\n  second  \n\n");
        assert_eq!(m.reason(), "`ip netns add x`: first; second");
    }

    #[test]
    fn the_stock_binary_must_be_an_executable_file() {
        let nowhere = Path::new("/nonexistent/hyphae/mycelium-0.7.10");
        let why = stock_mycelium_at(nowhere).unwrap_err();
        assert!(
            why.reason().starts_with(
                "needs the stock mycelium 0.7.10 binary: /nonexistent/hyphae/mycelium-0.7.10: "
            ) && why.reason().ends_with("(set HYPHAE_STOCK_MYCELIUM)"),
            "{why}"
        );
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let why = stock_mycelium_at(dir).unwrap_err();
        assert!(why.reason().contains("is not a file"), "{why}");
        // No execute bit at all: not even root may run it.
        let why = stock_mycelium_at(&dir.join("Cargo.toml")).unwrap_err();
        assert!(why.reason().contains("may not be executed"), "{why}");
        stock_mycelium_at(&std::env::current_exe().unwrap()).unwrap();
    }

    #[test]
    fn root_means_effective_uid_zero() {
        // /proc/self/status: "Uid:\t<real>\t<effective>\t<saved>\t<filesystem>".
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
        let euid = uids.split_whitespace().nth(1).unwrap();
        match Capability::Root.probe() {
            Ok(()) => assert_eq!(euid, "0"),
            Err(why) => assert_eq!(why.reason(), format!("needs root (running as uid {euid})")),
        }
    }

    #[test]
    fn probes_answer_with_a_reason_and_the_same_answer_twice() {
        for c in [
            Capability::Root,
            Capability::IoUring,
            Capability::NetNs,
            Capability::StockMycelium,
        ] {
            let first = c.probe();
            if let Err(why) = &first {
                assert!(why.reason().starts_with("needs "), "{c:?}: {why}");
            }
            assert_eq!(c.probe(), first, "{c:?}");
        }
    }
}
