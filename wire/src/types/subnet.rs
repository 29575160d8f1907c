use core::fmt;
use core::net::{IpAddr, Ipv6Addr};

use crate::error::DecodeError;

/// An IP prefix: an address with its host bits cleared and a prefix length.
///
/// The canonical form is enforced at construction, so two subnets are equal exactly when they
/// cover the same addresses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    addr: IpAddr,
    plen: u8,
}

/// Mycelium's global overlay prefix, `400::/7`.
pub const GLOBAL_SUBNET: Subnet = Subnet {
    addr: IpAddr::V6(Ipv6Addr::new(0x400, 0, 0, 0, 0, 0, 0, 0)),
    plen: 7,
};

impl Subnet {
    /// A subnet from an address and a prefix length; host bits are cleared.
    pub fn new(addr: IpAddr, plen: u8) -> Result<Self, DecodeError> {
        if plen > max_plen(addr) {
            return Err(DecodeError::InvalidValue("prefix length"));
        }
        Ok(Self {
            addr: mask(addr, plen),
            plen,
        })
    }

    /// A subnet that must already be canonical (no host bits set).
    pub fn new_canonical(addr: IpAddr, plen: u8) -> Result<Self, DecodeError> {
        let s = Self::new(addr, plen)?;
        match s.addr == addr {
            true => Ok(s),
            false => Err(DecodeError::InvalidValue("prefix host bits")),
        }
    }

    /// The `/64` containing `addr`.
    pub fn v6_64(addr: Ipv6Addr) -> Self {
        Self {
            addr: mask(IpAddr::V6(addr), 64),
            plen: 64,
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.plen
    }

    /// Whether `ip` lies in this subnet.
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V6(_), IpAddr::V6(_)) | (IpAddr::V4(_), IpAddr::V4(_)) => {
                mask(ip, self.plen) == self.addr
            }
            _ => false,
        }
    }

    /// Whether `other` lies entirely inside this subnet.
    pub fn contains_subnet(&self, other: &Self) -> bool {
        other.plen >= self.plen && self.contains_ip(other.addr)
    }

    /// The number of prefix bytes on the wire: `ceil(plen / 8)`.
    pub fn wire_prefix_len(&self) -> usize {
        usize::from(self.plen).div_ceil(8)
    }

    /// The address as 16 bytes (IPv4 is returned in its first 4).
    pub fn addr_octets(&self) -> ([u8; 16], usize) {
        match self.addr {
            IpAddr::V6(a) => (a.octets(), 16),
            IpAddr::V4(a) => {
                let mut b = [0; 16];
                b[..4].copy_from_slice(&a.octets());
                (b, 4)
            }
        }
    }
}

fn max_plen(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(addr: IpAddr, plen: u8) -> IpAddr {
    match addr {
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX.checked_shl(128 - u32::from(plen)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX.checked_shl(32 - u32::from(plen)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.plen)
    }
}

impl fmt::Debug for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subnet({self})")
    }
}

impl core::str::FromStr for Subnet {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .split_once('/')
            .ok_or(DecodeError::InvalidValue("subnet"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| DecodeError::InvalidValue("subnet address"))?;
        let plen: u8 = p
            .parse()
            .map_err(|_| DecodeError::InvalidValue("prefix length"))?;
        Self::new_canonical(addr, plen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_and_containment() {
        let s: Subnet = "4a9:5947:6719:badc::/64".parse().unwrap();
        assert_eq!(s.to_string(), "4a9:5947:6719:badc::/64");
        assert!(GLOBAL_SUBNET.contains_subnet(&s));
        let ip: IpAddr = "4a9:5947:6719:badc:8460:a53d:bfb9:aafc".parse().unwrap();
        assert!(s.contains_ip(ip));
        assert_eq!(Subnet::new(ip, 64).unwrap(), s);
        assert!("4a9:5947:6719:badc::1/64".parse::<Subnet>().is_err());
        assert!("::/129".parse::<Subnet>().is_err());
        let zero: Subnet = "::/0".parse().unwrap();
        assert!(zero.contains_subnet(&s) && !s.contains_subnet(&zero));
        assert!(!GLOBAL_SUBNET.contains_ip("600::1".parse().unwrap()));
        assert!(GLOBAL_SUBNET.contains_ip("5ff::1".parse().unwrap()));
        assert_eq!(s.wire_prefix_len(), 8);
    }
}
