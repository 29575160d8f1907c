//! The one cache of sealing keys: the AES key shared with another node is derived (an x25519
//! exchange and a key schedule) once and kept, up to a bound, by whoever seals or opens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hyphae_wire::identity::{PublicKey, SecretKey};
use hyphae_wire::seal::{NONCE_LEN, SealingKey};

/// Most keys one cache holds: the nodes a worker or the message task talks with at once.
pub(crate) const MAX_KEYS: usize = 4096;

/// Sealing keys by the other node's public key, at most [`MAX_KEYS`]; when full, an arbitrary
/// key makes room (and is counted): peers choose the keys we meet, so the map is bounded.
#[derive(Debug, Default)]
pub(crate) struct KeyCache {
    keys: HashMap<PublicKey, SealingKey>,
}

impl KeyCache {
    /// The key between `own` and `other`, derived on first use. `evictions` counts the keys
    /// dropped to make room.
    pub(crate) fn get(
        &mut self,
        own: &SecretKey,
        other: PublicKey,
        evictions: &AtomicU64,
    ) -> &SealingKey {
        if self.keys.len() >= MAX_KEYS
            && !self.keys.contains_key(&other)
            && let Some(old) = self.keys.keys().next().copied()
        {
            self.keys.remove(&old);
            evictions.fetch_add(1, Relaxed);
        }
        self.keys
            .entry(other)
            .or_insert_with(|| SealingKey::new(&own.shared_secret(&other)))
    }

    /// Keys held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

/// Nonces drawn from the operating system a block at a time: one `getrandom` call per 340
/// sealed frames instead of one per frame (the call was about 5 % of a TUN node's CPU under
/// iperf3). The nonces are the same kind as before, 12 bytes straight from the kernel's
/// CSPRNG, each used once.
#[derive(Debug)]
pub(crate) struct Nonces {
    block: Box<[u8; NONCE_BLOCK]>,
    next: usize,
}

/// Bytes drawn per `getrandom` call: 340 nonces.
const NONCE_BLOCK: usize = 340 * NONCE_LEN;

impl Default for Nonces {
    fn default() -> Self {
        Self {
            block: Box::new([0; NONCE_BLOCK]),
            next: NONCE_BLOCK,
        }
    }
}

impl Nonces {
    /// A fresh nonce; `None` only if the system has no randomness.
    pub(crate) fn next(&mut self) -> Option<[u8; NONCE_LEN]> {
        if self.next + NONCE_LEN > NONCE_BLOCK {
            *self.block = hyphae_wire::seal::random_bytes().ok()?;
            self.next = 0;
        }
        let mut n = [0; NONCE_LEN];
        n.copy_from_slice(&self.block[self.next..self.next + NONCE_LEN]);
        // A nonce is handed out once: its bytes do not stay behind to be read again.
        self.block[self.next..self.next + NONCE_LEN].fill(0);
        self.next += NONCE_LEN;
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_counted() {
        let own = SecretKey::from_bytes([7; 32]);
        let evictions = AtomicU64::new(0);
        let mut c = KeyCache::default();
        for i in 0..MAX_KEYS + 10 {
            let mut b = [0u8; 32];
            // Away from the bits x25519 clamps.
            b[8..16].copy_from_slice(&(i as u64).to_le_bytes());
            let other = SecretKey::from_bytes(b).public_key();
            c.get(&own, other, &evictions);
        }
        assert_eq!(c.len(), MAX_KEYS);
        assert_eq!(evictions.load(Relaxed), 10);
        // A key held is found again without evicting.
        let other = SecretKey::from_bytes([1; 32]).public_key();
        c.get(&own, other, &evictions);
        let after_first = evictions.load(Relaxed);
        c.get(&own, other, &evictions);
        assert_eq!(evictions.load(Relaxed), after_first);
        assert_eq!(c.len(), MAX_KEYS);
    }

    #[test]
    fn nonces_are_fresh_across_blocks() {
        let mut n = Nonces::default();
        let all: std::collections::HashSet<_> = (0..1000).map(|_| n.next().unwrap()).collect();
        assert_eq!(
            all.len(),
            1000,
            "1000 nonces over three blocks, none repeated"
        );
        assert!(!all.contains(&[0; NONCE_LEN]));
    }
}
