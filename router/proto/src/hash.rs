//! A small seeded hasher for the router's tables.
//!
//! The router's maps are keyed by subnets and router ids that peers choose, so the hash is
//! seeded (the driver passes a random seed in [`crate::babel::Config::hash_seed`]); with a fixed seed
//! the iteration order, and so a whole simulation, is deterministic.

use std::hash::{BuildHasher, Hasher};

const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// Builds [`SeededHasher`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeededState {
    seed: u64,
}

impl SeededState {
    /// A builder whose hashers start from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }
}

impl BuildHasher for SeededState {
    type Hasher = SeededHasher;

    fn build_hasher(&self) -> SeededHasher {
        SeededHasher { h: self.seed ^ K }
    }
}

/// A multiply-rotate word hasher with a final avalanche.
#[derive(Debug, Clone, Copy)]
pub struct SeededHasher {
    h: u64,
}

impl SeededHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.h = (self.h.rotate_left(23) ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd);
    }
}

impl Hasher for SeededHasher {
    #[inline]
    fn finish(&self) -> u64 {
        // murmur3 fmix64, so that every output bit depends on every input bit.
        let mut h = self.h;
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        h
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_changes_hash_and_same_seed_is_stable() {
        let a = SeededState::new(1).hash_one(42u128 << 64);
        let b = SeededState::new(2).hash_one(42u128 << 64);
        assert_ne!(a, b);
        assert_eq!(a, SeededState::new(1).hash_one(42u128 << 64));
        assert_ne!(
            SeededState::new(1).hash_one([1u8; 9].as_slice()),
            SeededState::new(1).hash_one([1u8; 10].as_slice())
        );
    }
}
