//! Peer endpoints as the reference writes them: `proto://addr`, `proto` one of `tcp` or `quic`
//! (case-insensitive), `addr` a socket address (`1.2.3.4:9651`, `[2001:db8::1]:9651`).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use hyphae_proto::babel::LinkKind;

/// A transport protocol for a peer link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// Mycelium framing over TCP.
    Tcp,
    /// Mycelium framing over QUIC (control on a stream, data as datagrams).
    Quic,
}

impl Proto {
    /// The lower-case name, as in endpoints and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Quic => "quic",
        }
    }
}

/// A peer endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// The transport.
    pub proto: Proto,
    /// The socket address.
    pub addr: SocketAddr,
}

/// Why an endpoint string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// No `://`.
    #[error("invalid endpoint {0:?}: expected proto://address:port")]
    Syntax(String),
    /// An unknown protocol.
    #[error("invalid endpoint {0:?}: unsupported protocol (use tcp or quic)")]
    Proto(String),
    /// A bad socket address.
    #[error("invalid endpoint {0:?}: bad socket address")]
    Addr(String),
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (proto, addr) = s
            .split_once("://")
            .ok_or_else(|| EndpointError::Syntax(s.into()))?;
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "quic" => Proto::Quic,
            _ => return Err(EndpointError::Proto(s.into())),
        };
        let addr = addr.parse().map_err(|_| EndpointError::Addr(s.into()))?;
        Ok(Self { proto, addr })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.proto.as_str(), self.addr)
    }
}

/// `addr` with an IPv4-mapped IPv6 address written as IPv4, as peers are listed and matched.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// The link kind (for its static cost) of a link over `proto` to `addr`.
pub(crate) fn link_kind(proto: Proto, addr: SocketAddr) -> LinkKind {
    let v4 = match addr {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    match (proto, v4) {
        (Proto::Tcp, true) => LinkKind::TcpV4,
        (Proto::Tcp, false) => LinkKind::TcpV6,
        (Proto::Quic, true) => LinkKind::QuicV4,
        (Proto::Quic, false) => LinkKind::QuicV6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let e: Endpoint = "TCP://[::1]:9651".parse().unwrap();
        assert_eq!(e.proto, Proto::Tcp);
        assert_eq!(e.to_string(), "tcp://[::1]:9651");
        assert_eq!(
            "quic://1.2.3.4:1".parse::<Endpoint>().unwrap().proto,
            Proto::Quic
        );
        assert!(matches!(
            "1.2.3.4:1".parse::<Endpoint>(),
            Err(EndpointError::Syntax(_))
        ));
        assert!(matches!(
            "udp://1.2.3.4:1".parse::<Endpoint>(),
            Err(EndpointError::Proto(_))
        ));
        assert!(matches!(
            "tcp://1.2.3.4".parse::<Endpoint>(),
            Err(EndpointError::Addr(_))
        ));
    }
}
