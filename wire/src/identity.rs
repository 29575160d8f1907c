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
        /// The path names something other than a regular file (a directory, a FIFO, a
        /// device).
        #[error("key file {path}: not a regular file")]
        NotAFile {
            /// The file.
            path: String,
        },
        /// No randomness was available to create a key.
        #[error("no randomness to create a key: {0}")]
        Random(getrandom::Error),
    }

    /// Reads the raw 32-byte secret at `path`: a regular file of exactly 32 bytes (what it
    /// is and how long are checked before it is opened, so a FIFO or a device is refused, not
    /// waited on or read without end).
    pub fn load(path: &Path) -> Result<SecretKey, KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.display().to_string(),
            source,
        };
        let meta = fs::metadata(path).map_err(io)?;
        if !meta.is_file() {
            return Err(KeyFileError::NotAFile {
                path: path.display().to_string(),
            });
        }
        if meta.len() != 32 {
            return Err(KeyFileError::BadLength {
                path: path.display().to_string(),
                len: usize::try_from(meta.len()).unwrap_or(usize::MAX),
            });
        }
        let mut bytes = [0u8; 32];
        let read = fs::File::open(path).and_then(|mut f| io::Read::read_exact(&mut f, &mut bytes));
        let res = read.map(|()| SecretKey::from_bytes(bytes)).map_err(io);
        zeroize::Zeroize::zeroize(&mut bytes);
        res
    }

    /// The file's permission bits, when they let users other than its owner read it (a
    /// secret key should be mode 0600); `None` when they do not, or off Unix.
    pub fn readable_by_others(path: &Path) -> Option<u32> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(path).ok()?.permissions().mode() & 0o777;
            (mode & 0o077 != 0).then_some(mode)
        }
        #[cfg(not(unix))]
        {
            let _ = path;
            None
        }
    }

    /// Loads the key at `path`, or creates it (mode 0600, parent directories as needed) if there
    /// is no file there. A file that exists but is not a key is an error, never overwritten.
    /// The new key is written whole to a file of its own and then linked into place, so a
    /// process starting at the same time, or after a crash, never finds a partial key: it
    /// finds none, or the whole one.
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
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        // Distinct for every call, in this process and across processes.
        static CALLS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
        let call = CALLS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        name.push(std::format!(".new.{}.{call}", std::process::id()));
        let tmp = path.with_file_name(name);
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let written = opts.open(&tmp).and_then(|mut f| {
            f.write_all(&key.to_bytes())?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io(e));
        }
        // A hard link fails if the name exists: the first of two starters wins.
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    let _ = fs::File::open(dir).and_then(|d| d.sync_all());
                }
                Ok(key)
            }
            // Another process created it between our read and our link: use theirs.
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
            assert_eq!(mode & 0o777, 0o600);
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

    #[cfg(all(feature = "std", unix))]
    fn key_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("hyphae-key-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[cfg(all(feature = "std", unix))]
    #[test]
    fn a_new_key_file_is_the_owners_alone_and_an_open_one_is_told() {
        use std::os::unix::fs::PermissionsExt;
        let dir = key_dir("perm");
        let path = dir.join("priv_key.bin");
        let k = key_file::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(key_file::readable_by_others(&path), None);
        assert_eq!(key_file::load(&path).unwrap().to_bytes(), k.to_bytes());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(key_file::readable_by_others(&path), Some(0o644));
        // No temporary file left beside it.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A FIFO (or a device, or a huge file) given as the key file is refused at once, not
    /// waited on or read without end.
    #[cfg(all(feature = "std", unix))]
    #[test]
    fn a_key_file_that_is_not_a_regular_32_byte_file_is_refused_at_once() {
        let dir = key_dir("fifo");
        let path = dir.join("priv_key.bin");
        let ok = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(ok.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(key_file::load_or_create(&p).map(|_| ()));
        });
        let r = rx.recv_timeout(std::time::Duration::from_secs(3));
        match r {
            Ok(r) => assert!(
                matches!(r, Err(key_file::KeyFileError::NotAFile { .. })),
                "{r:?}"
            ),
            Err(_) => panic!("load_or_create on a FIFO did not return within 3 s"),
        }
        let big = dir.join("big");
        std::fs::write(&big, vec![0u8; 1 << 20]).unwrap();
        assert!(matches!(
            key_file::load(&big),
            Err(key_file::KeyFileError::BadLength { len: 1_048_576, .. })
        ));
        assert!(matches!(
            key_file::load(&dir),
            Err(key_file::KeyFileError::NotAFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Two processes starting at once (or one after a crash) never find a partial key: both
    /// get the same whole key.
    #[cfg(all(feature = "std", unix))]
    #[test]
    fn starters_racing_to_create_the_key_get_the_same_whole_key() {
        let dir = key_dir("race");
        let mut failures = Vec::new();
        for i in 0..500 {
            let path = dir.join(format!("k{i}"));
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let keys: Vec<_> = (0..2)
                .map(|_| {
                    let (p, b) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        b.wait();
                        key_file::load_or_create(&p).map(|k| k.public_key())
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect();
            match (&keys[0], &keys[1]) {
                (Ok(a), Ok(b)) if a == b => {}
                other => failures.push(format!("{other:?}")),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            failures.is_empty(),
            "{} of 500 races failed, e.g. {:?}",
            failures.len(),
            failures.first()
        );
    }
}
