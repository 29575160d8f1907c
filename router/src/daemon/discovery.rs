//! Link-local peer discovery, as the reference: every 60 s a 50-byte beacon goes to
//! `[ff02::cafe]:9650` on every interface that is up, multicast-capable, not loopback or
//! point-to-point and has an `fe80::` address:
//!
//! ```text
//! b"mycelium" (8) | TCP listen port, u16 BE (2) | router id (40)
//! ```
//!
//! A beacon is accepted only from an `fe80::/64` source, with exact size and magic, and not
//! from our own router id; its sender is then dialed over TCP. A discovered peer that fails
//! to connect three times is forgotten (in the control thread).

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;

use hyphae_wire::RouterId;

use super::endpoint::{Endpoint, Proto};
use super::inbox::ControlMsg;
use super::shared::Shared;

/// Beacon magic.
const MAGIC: &[u8; 8] = b"mycelium";
/// Beacon length.
pub(crate) const BEACON_LEN: usize = 50;
/// The discovery multicast group.
pub(crate) const GROUP: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xcafe);
/// Beacon period (the reference's).
const PERIOD: Duration = Duration::from_secs(60);
/// The first beacons go out faster, so that nodes starting together find each other without
/// waiting a whole period for the second round.
const STARTUP_PERIOD: Duration = Duration::from_secs(5);
/// How many rounds use [`STARTUP_PERIOD`].
const STARTUP_ROUNDS: u32 = 3;

/// Builds a beacon.
pub(crate) fn encode(tcp_port: u16, router_id: &RouterId) -> [u8; BEACON_LEN] {
    let mut b = [0u8; BEACON_LEN];
    b[..8].copy_from_slice(MAGIC);
    b[8..10].copy_from_slice(&tcp_port.to_be_bytes());
    b[10..].copy_from_slice(&router_id.0);
    b
}

/// Parses a beacon: its TCP port and router id.
pub(crate) fn decode(b: &[u8]) -> Option<(u16, RouterId)> {
    let b: &[u8; BEACON_LEN] = b.try_into().ok()?;
    if &b[..8] != MAGIC {
        return None;
    }
    let mut rid = [0u8; RouterId::LEN];
    rid.copy_from_slice(&b[10..]);
    Some((u16::from_be_bytes([b[8], b[9]]), RouterId(rid)))
}

/// Whether a beacon from `from` should be dialed: link-local source, not ourselves.
pub(crate) fn accept(from: SocketAddr, beacon: &[u8], own: &RouterId) -> Option<Endpoint> {
    let SocketAddr::V6(from) = from else {
        return None;
    };
    if from.ip().segments()[..4] != [0xfe80, 0, 0, 0] {
        return None;
    }
    let (port, rid) = decode(beacon)?;
    if rid == *own {
        return None;
    }
    let addr = SocketAddrV6::new(*from.ip(), port, 0, from.scope_id());
    Some(Endpoint {
        proto: Proto::Tcp,
        addr: addr.into(),
    })
}

/// Interfaces to beacon on: `(ifindex, name)` of those that are up, multicast, not loopback
/// or point-to-point, with an `fe80::` address (from `/proc/net/if_inet6`).
fn interfaces() -> Vec<(u32, String)> {
    const UP: u32 = 0x1;
    const LOOPBACK: u32 = 0x8;
    const POINTOPOINT: u32 = 0x10;
    const MULTICAST: u32 = 0x1000;
    let Ok(table) = std::fs::read_to_string("/proc/net/if_inet6") else {
        return Vec::new();
    };
    let mut out: Vec<(u32, String)> = Vec::new();
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [addr, idx, _, _, _, name] = f[..] else {
            continue;
        };
        if !addr.starts_with("fe80") {
            continue;
        }
        let Ok(idx) = u32::from_str_radix(idx, 16) else {
            continue;
        };
        let flags = std::fs::read_to_string(format!("/sys/class/net/{name}/flags"))
            .ok()
            .and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
            .unwrap_or(0);
        let usable =
            flags & UP != 0 && flags & MULTICAST != 0 && flags & (LOOPBACK | POINTOPOINT) == 0;
        if usable && !out.iter().any(|(i, _)| *i == idx) {
            out.push((idx, name.to_owned()));
        }
    }
    out
}

/// Binds the discovery socket.
pub(crate) fn bind(port: u16) -> std::io::Result<std::net::UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None)?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.set_multicast_loop_v6(false)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    Ok(s.into())
}

/// Runs discovery until shutdown (a task on worker 0).
pub(crate) async fn run(shared: Arc<Shared>, sock: std::net::UdpSocket, port: u16) {
    let sock = match tokio::net::UdpSocket::from_std(sock) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("peer discovery disabled: {e}");
            return;
        }
    };
    let beacon = encode(shared.settings.tcp_port, &shared.node.router_id);
    let mut joined: Vec<u32> = Vec::new();
    let mut next = tokio::time::Instant::now();
    let mut rounds = 0u32;
    let mut shutdown = shared.shutdown.clone();
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep_until(next) => {
                rounds += 1;
                next += if rounds < STARTUP_ROUNDS { STARTUP_PERIOD } else { PERIOD };
                for (idx, name) in interfaces() {
                    if !joined.contains(&idx) {
                        match sock.join_multicast_v6(&GROUP, idx) {
                            Ok(()) => {
                                tracing::info!(interface = %name, "peer discovery listening");
                                joined.push(idx);
                            }
                            Err(e) => tracing::debug!(interface = %name, "joining ff02::cafe: {e}"),
                        }
                    }
                    let to = SocketAddrV6::new(GROUP, port, 0, idx);
                    if let Err(e) = sock.send_to(&beacon, to).await {
                        tracing::debug!(interface = %name, "beacon: {e}");
                    }
                }
            }
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                if let Some(ep) = accept(from, &buf[..n], &shared.node.router_id) {
                    let _ = shared.inbox.control.try_send(ControlMsg::Discovered(ep));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(b: u8) -> RouterId {
        RouterId([b; 40])
    }

    #[test]
    fn beacon_round_trip_and_filters() {
        let b = encode(9651, &rid(7));
        assert_eq!(b.len(), 50);
        assert_eq!(&b[..10], b"mycelium\x25\xb3");
        assert_eq!(decode(&b), Some((9651, rid(7))));
        assert_eq!(decode(&b[..49]), None);
        let mut bad = b;
        bad[0] = b'M';
        assert_eq!(decode(&bad), None);

        let ll: SocketAddr = "[fe80::1%3]:9650".parse().unwrap();
        let ep = accept(ll, &b, &rid(1)).unwrap();
        assert_eq!(ep.to_string(), "tcp://[fe80::1%3]:9651");
        assert_eq!(accept(ll, &b, &rid(7)), None, "our own beacon");
        assert_eq!(
            accept("[2001:db8::1]:9650".parse().unwrap(), &b, &rid(1)),
            None
        );
        assert_eq!(accept("10.0.0.1:9650".parse().unwrap(), &b, &rid(1)), None);
    }
}
