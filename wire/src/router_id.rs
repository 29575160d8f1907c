//! The Babel router id: a node's public key, a zone and a per-start random part.

use core::fmt;

use crate::identity::PublicKey;

/// A Mycelium router id: the node's x25519 public key (32 bytes), a zone (2 bytes, always 0)
/// and 6 random bytes chosen at every process start, 40 bytes in all.
///
/// Because the random part changes at restart, a restarted node is a new Babel source.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouterId(pub [u8; Self::LEN]);

impl RouterId {
    /// Encoded length.
    pub const LEN: usize = 40;

    /// Builds a router id from its parts.
    pub fn new(pk: &PublicKey, zone: u16, rnd: [u8; 6]) -> Self {
        let mut b = [0; Self::LEN];
        b[..32].copy_from_slice(pk.as_bytes());
        b[32..34].copy_from_slice(&zone.to_be_bytes());
        b[34..].copy_from_slice(&rnd);
        Self(b)
    }

    /// The public key part.
    pub fn public_key(&self) -> PublicKey {
        let mut pk = [0; 32];
        pk.copy_from_slice(&self.0[..32]);
        PublicKey::from(pk)
    }

    /// The zone part.
    pub fn zone(&self) -> u16 {
        u16::from_be_bytes([self.0[32], self.0[33]])
    }

    /// The random part.
    pub fn rnd(&self) -> [u8; 6] {
        let mut r = [0; 6];
        r.copy_from_slice(&self.0[34..]);
        r
    }
}

impl fmt::Display for RouterId {
    /// `<pubkey hex>-<zone hex>-<rnd hex>`, as the reference prints it (and puts in its QUIC
    /// certificate).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..32] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:04x}-", self.zone())?;
        for b in &self.0[34..] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RouterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RouterId({self})")
    }
}
