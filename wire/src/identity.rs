//! Node identity: the x25519 key pair, the overlay address derived from the public key, the
//! node's `/64` and its router id.
//!
//! Address derivation (as the reference): the first 16 bytes of blake3's extendable output over
//! the 32-byte public key, with the first byte replaced by `0x04 | parity`, where parity is the
//! number of set bits in the original first byte modulo 2. Every address is therefore in
//! `400::/7`. The node owns the `/64` containing its address.
//!
//! The key file is the raw 32-byte x25519 secret, nothing else (the reference's format).

use core::fmt;
use core::net::Ipv6Addr;

use zeroize::Zeroize;

use crate::types::Subnet;

/// A node's x25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The node's overlay address, always inside `400::/7`.
    pub fn address(&self) -> Ipv6Addr {
        let mut h = blake3::Hasher::new();
        h.update(&self.0);
        let mut buf = [0u8; 16];
        h.finalize_xof().fill(&mut buf);
        let parity = (buf[0].count_ones() % 2) as u8;
        buf[0] = 0x04 | parity;
        Ipv6Addr::from(buf)
    }

    /// The `/64` this node owns and announces.
    pub fn subnet(&self) -> Subnet {
        Subnet::v6_64(self.address())
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
        }
        Some(Self(out))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl From<[u8; 32]> for PublicKey {
    fn from(b: [u8; 32]) -> Self {
        Self(b)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A node's x25519 secret key. Zeroed on drop; `Debug` does not print it.
#[derive(Clone)]
pub struct SecretKey(x25519_dalek::StaticSecret);

impl SecretKey {
    /// The secret from its 32 raw bytes (the key-file contents).
    pub fn from_bytes(mut bytes: [u8; 32]) -> Self {
        let s = x25519_dalek::StaticSecret::from(bytes);
        bytes.zeroize();
        Self(s)
    }

    /// A fresh secret from the operating system's random source.
    #[cfg(feature = "std")]
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b)?;
        Ok(Self::from_bytes(b))
    }

    /// The raw bytes, as written to the key file.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    /// The x25519 shared secret with `peer`, which the reference uses directly as the
    /// AES-256-GCM key for all traffic between the two nodes, in both directions.
    pub fn shared_secret(&self, peer: &PublicKey) -> SharedSecret {
        let pk = x25519_dalek::PublicKey::from(peer.0);
        SharedSecret(self.0.diffie_hellman(&pk).to_bytes())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// The raw x25519 shared secret between two nodes. Zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedSecret(pub(crate) [u8; 32]);

impl SharedSecret {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for SharedSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

/// Loading and creating key files.
#[cfg(feature = "std")]
pub mod key_file {
    use std::fs;
    use std::io::{self, Write};
    use std::path::Path;
    use std::string::{String, ToString};

    use super::SecretKey;

    /// Why a key file could not be used.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum KeyFileError {
        /// The file could not be read, created or written.
        #[error("key file {path}: {source}")]
        Io {
            /// The file.
            path: String,
            /// The underlying error.
            source: io::Error,
        },
        /// The file exists but is not a 32-byte x25519 secret.
        #[error("key file {path}: expected 32 bytes, found {len}")]
        BadLength {
            /// The file.
            path: String,
            /// Its length.
            len: usize,
        },
        /// No randomness was available to create a key.
        #[error("no randomness to create a key: {0}")]
        Random(getrandom::Error),
    }

    /// Reads the raw 32-byte secret at `path`.
    pub fn load(path: &Path) -> Result<SecretKey, KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut bytes = fs::read(path).map_err(io)?;
        let res = <[u8; 32]>::try_from(bytes.as_slice())
            .map(SecretKey::from_bytes)
            .map_err(|_| KeyFileError::BadLength {
                path: path.display().to_string(),
                len: bytes.len(),
            });
        zeroize::Zeroize::zeroize(&mut bytes);
        res
    }

    /// Loads the key at `path`, or creates it (mode 0640, parent directories as needed) if there
    /// is no file there. A file that exists but is not a key is an error, never overwritten.
    pub fn load_or_create(path: &Path) -> Result<SecretKey, KeyFileError> {
        match load(path) {
            Err(KeyFileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let io = |source| KeyFileError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let key = SecretKey::generate().map_err(KeyFileError::Random)?;
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o640);
        match opts.open(path) {
            Ok(mut f) => {
                f.write_all(&key.to_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                Ok(key)
            }
            // Another process created it between our read and our create: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => load(path),
            Err(e) => Err(io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_hex_round_trip() {
        let pk = SecretKey::from_bytes([7; 32]).public_key();
        assert_eq!(PublicKey::from_hex(&pk.to_string()), Some(pk));
        assert_eq!(PublicKey::from_hex("zz"), None);
        assert_eq!(PublicKey::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn shared_secret_is_symmetric() {
        let a = SecretKey::from_bytes([1; 32]);
        let b = SecretKey::from_bytes([2; 32]);
        assert_eq!(
            a.shared_secret(&b.public_key()),
            b.shared_secret(&a.public_key())
        );
    }

    #[test]
    fn address_is_in_global_subnet() {
        for i in 0..64u8 {
            let pk = SecretKey::from_bytes([i; 32]).public_key();
            let a = pk.address();
            assert!(crate::types::GLOBAL_SUBNET.contains_ip(a.into()), "{a}");
            assert!(pk.subnet().contains_ip(a.into()));
        }
    }

    #[cfg(feature = "std")]
    #[test]
    fn key_file_created_then_reloaded() {
        let dir = std::env::temp_dir().join(format!("hyphae-key-{}", std::process::id()));
        let path = dir.join("sub/priv_key.bin");
        let _ = std::fs::remove_dir_all(&dir);
        let k1 = key_file::load_or_create(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), k1.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o640);
        }
        let k2 = key_file::load_or_create(&path).unwrap();
        assert_eq!(k1.public_key(), k2.public_key());
        // A file of the wrong size is reported, not replaced.
        std::fs::write(&path, b"short").unwrap();
        let err = key_file::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, key_file::KeyFileError::BadLength { len: 5, .. }),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"short");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
