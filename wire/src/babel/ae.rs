//! Babel address encodings (RFC 8966 section 4.1.1) as mycelium uses them.
//!
//! Senders only ever use AE 2 (IPv6) for prefixes and AE 0 for "no address" (wildcard
//! RouteRequest, IHU without address). Prefixes are never compressed: `ceil(plen / 8)` bytes
//! follow, and the bits past `plen` must be zero.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::BufMut;

use crate::coding::Reader;
use crate::error::DecodeError;
use crate::types::Subnet;

/// An address-encoding code point (open: unknown values are kept and printed).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ae(pub u8);

impl Ae {
    /// No address / wildcard.
    pub const WILDCARD: Self = Self(0);
    /// IPv4, up to 4 bytes.
    pub const IPV4: Self = Self(1);
    /// IPv6, up to 16 bytes.
    pub const IPV6: Self = Self(2);
    /// Link-local IPv6: 8 bytes, `fe80::/64` implied.
    pub const IPV6_LL: Self = Self(3);

    /// The encoding a sender uses for `subnet`.
    pub fn for_subnet(subnet: &Subnet) -> Self {
        match subnet.addr() {
            IpAddr::V4(_) => Self::IPV4,
            IpAddr::V6(_) => Self::IPV6,
        }
    }
}

impl fmt::Debug for Ae {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::WILDCARD => f.write_str("WILDCARD"),
            Self::IPV4 => f.write_str("IPV4"),
            Self::IPV6 => f.write_str("IPV6"),
            Self::IPV6_LL => f.write_str("IPV6_LL"),
            Self(v) => write!(f, "Ae({v})"),
        }
    }
}

/// Reads a prefix of `plen` bits in encoding `ae`. AE 0 means the default route `::/0` and
/// requires `plen == 0`; AE 3 is not a prefix encoding and is rejected.
pub(crate) fn decode_prefix(r: &mut Reader<'_>, ae: Ae, plen: u8) -> Result<Subnet, DecodeError> {
    let n = usize::from(plen).div_ceil(8);
    match ae {
        Ae::WILDCARD if plen == 0 => Ok(Subnet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)?),
        Ae::WILDCARD => Err(DecodeError::InvalidValue("wildcard prefix length")),
        Ae::IPV4 if plen <= 32 => {
            let mut b = [0u8; 4];
            b[..n].copy_from_slice(r.take(n)?);
            Subnet::new_canonical(IpAddr::V4(Ipv4Addr::from(b)), plen)
        }
        Ae::IPV6 if plen <= 128 => {
            let mut b = [0u8; 16];
            b[..n].copy_from_slice(r.take(n)?);
            Subnet::new_canonical(IpAddr::V6(Ipv6Addr::from(b)), plen)
        }
        Ae::IPV4 | Ae::IPV6 => Err(DecodeError::InvalidValue("prefix length")),
        Ae(other) => Err(DecodeError::UnsupportedAe(other)),
    }
}

/// Writes the `ceil(plen / 8)` prefix bytes of `subnet`.
pub(crate) fn encode_prefix<B: BufMut>(subnet: &Subnet, buf: &mut B) {
    let (octets, _) = subnet.addr_octets();
    buf.put_slice(&octets[..subnet.wire_prefix_len()]);
}

/// Reads a full address in encoding `ae` (IHU): `None` for AE 0.
pub(crate) fn decode_address(r: &mut Reader<'_>, ae: Ae) -> Result<Option<IpAddr>, DecodeError> {
    Ok(match ae {
        Ae::WILDCARD => None,
        Ae::IPV4 => Some(IpAddr::V4(r.ipv4()?)),
        Ae::IPV6 => Some(IpAddr::V6(r.ipv6()?)),
        Ae::IPV6_LL => {
            let mut b = [0u8; 16];
            b[..2].copy_from_slice(&[0xfe, 0x80]);
            b[8..].copy_from_slice(r.take(8)?);
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        Ae(other) => return Err(DecodeError::UnsupportedAe(other)),
    })
}

/// The encoding and length used to send `addr` in an IHU.
pub(crate) fn address_ae(addr: Option<IpAddr>) -> (Ae, usize) {
    match addr {
        None => (Ae::WILDCARD, 0),
        Some(IpAddr::V4(_)) => (Ae::IPV4, 4),
        Some(IpAddr::V6(a)) if is_link_local_64(a) => (Ae::IPV6_LL, 8),
        Some(IpAddr::V6(_)) => (Ae::IPV6, 16),
    }
}

pub(crate) fn encode_address<B: BufMut>(addr: Option<IpAddr>, buf: &mut B) {
    match addr {
        None => {}
        Some(IpAddr::V4(a)) => buf.put_slice(&a.octets()),
        Some(IpAddr::V6(a)) if is_link_local_64(a) => buf.put_slice(&a.octets()[8..]),
        Some(IpAddr::V6(a)) => buf.put_slice(&a.octets()),
    }
}

fn is_link_local_64(a: Ipv6Addr) -> bool {
    a.octets()[..8] == [0xfe, 0x80, 0, 0, 0, 0, 0, 0]
}
