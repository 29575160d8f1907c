//! Sealing and opening data-frame bodies exactly as the reference does.
//!
//! * Key: the raw x25519 shared secret of the two nodes is the AES-256-GCM key. There is no KDF,
//!   no per-direction key and no associated data; both directions use the same key.
//! * Plaintext: a 4-byte user-data header `[1, kind, 0, 0]` followed by the payload.
//! * Body on the wire: `ciphertext (4 + payload) || tag (16) || nonce (12)`, the nonce random
//!   per frame.
//!
//! The data header (addresses, hop limit) is not authenticated: that is the reference's design,
//! and hyphae must match it to interoperate.
//!
//! [`SealingKey`] holds the expanded AES key, so the key schedule runs once per peer pair, not
//! once per frame. The cipher is ring's AES-256-GCM (its assembly interleaves AES and GHASH):
//! about 3.4x the throughput of RustCrypto's `aes-gcm` on this project's machine (1400-byte
//! frames: 280 against 950 ns), and ring is already in the tree through rustls and quinn. Nonces come from the caller (this crate reads no randomness on the data
//! path); [`random_nonce`] is the `std` convenience.
//!
//! The paved path works on whole data frames, in place, with no intermediate buffer:
//! [`DataHeader::emit_sealed`](crate::data::DataHeader::emit_sealed) appends header and sealed
//! body in one go, and [`DataFrame::open`](crate::data::DataFrame::open) opens a received frame
//! and says where its payload sits, so no caller computes header, tag or nonce offsets.

use core::fmt;

use bytes::BufMut;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

use crate::identity::SharedSecret;

/// Version byte of the user-data header.
pub const USER_DATA_VERSION: u8 = 1;
/// User-data header length.
pub const USER_HEADER_LEN: usize = 4;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Nonce length.
pub const NONCE_LEN: usize = 12;
/// Bytes a sealed body adds to its payload.
pub const SEAL_OVERHEAD: usize = USER_HEADER_LEN + TAG_LEN + NONCE_LEN;

/// The user-data type code point (open).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserDataKind(pub u8);

impl UserDataKind {
    /// An IPv6 packet for the TUN device.
    pub const L3: Self = Self(0);
    /// A message-subsystem packet.
    pub const MESSAGE: Self = Self(1);
    /// An out-of-band ICMP error.
    pub const OOB_ICMP: Self = Self(2);
}

impl fmt::Debug for UserDataKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::L3 => f.write_str("L3"),
            Self::MESSAGE => f.write_str("MESSAGE"),
            Self::OOB_ICMP => f.write_str("OOB_ICMP"),
            Self(v) => write!(f, "UserDataKind({v})"),
        }
    }
}

/// Why a sealed body could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Shorter than header, tag and nonce.
    #[error("sealed body too short ({0} bytes)")]
    TooShort(usize),
    /// Authentication failed: wrong key, or tampered.
    #[error("authentication failed")]
    Auth,
    /// The user-data header has a version other than 1.
    #[error("unsupported user-data version {0}")]
    Version(u8),
}

/// An AES-256-GCM key for one pair of nodes, expanded once.
#[derive(Clone)]
pub struct SealingKey(LessSafeKey);

impl SealingKey {
    /// The key for traffic between the two nodes of `secret`.
    pub fn new(secret: &SharedSecret) -> Self {
        match UnboundKey::new(&AES_256_GCM, secret.as_bytes()) {
            Ok(k) => Self(LessSafeKey::new(k)),
            // ring refuses only a key of the wrong length; a shared secret is 32 bytes.
            Err(_) => unreachable!("an AES-256 key is 32 bytes"),
        }
    }

    /// Appends a sealed body carrying `payload` of `kind` to `out`; the sealed length is
    /// `payload.len() + SEAL_OVERHEAD`. To build a whole data frame, use
    /// [`DataHeader::emit_sealed`](crate::data::DataHeader::emit_sealed), which seals through
    /// this same code.
    pub fn seal<B: BufMut + AsMut<[u8]>>(
        &self,
        nonce: [u8; NONCE_LEN],
        kind: UserDataKind,
        payload: &[u8],
        out: &mut B,
    ) {
        self.seal_parts(nonce, kind, &[payload], out);
    }

    /// The one place that lays out a sealed body: appends the user-data header and `parts`,
    /// encrypts that region of `out` in place, then appends tag and nonce. `out` must be a
    /// growable buffer whose `as_mut()` is everything written so far (`Vec<u8>`, `BytesMut`).
    pub(crate) fn seal_parts<B: BufMut + AsMut<[u8]>>(
        &self,
        nonce: [u8; NONCE_LEN],
        kind: UserDataKind,
        parts: &[&[u8]],
        out: &mut B,
    ) {
        let start = out.as_mut().len();
        out.put_slice(&[USER_DATA_VERSION, kind.0, 0, 0]);
        for part in parts {
            out.put_slice(part);
        }
        let tag = self.seal_in_place(nonce, &mut out.as_mut()[start..]);
        out.put_slice(&tag);
        out.put_slice(&nonce);
    }

    /// Encrypts `plaintext` (user-data header included) in place and returns the tag; the caller
    /// appends tag and nonce.
    pub fn seal_in_place(&self, nonce: [u8; NONCE_LEN], plaintext: &mut [u8]) -> [u8; TAG_LEN] {
        // Encryption fails only for inputs longer than GCM's 64 GiB limit, far beyond any
        // frame; a tag of zeros there would simply fail to open.
        let nonce = Nonce::assume_unique_for_key(nonce);
        let mut out = [0; TAG_LEN];
        if let Ok(tag) = self
            .0
            .seal_in_place_separate_tag(nonce, Aad::empty(), plaintext)
        {
            out.copy_from_slice(tag.as_ref());
        }
        out
    }

    /// Opens a sealed body in place. On success returns the kind and the payload, a sub-slice
    /// of `sealed`. On [`OpenError::TooShort`] `sealed` is left as it was; on
    /// [`OpenError::Auth`] the ciphertext has been overwritten (ring zeroes what it decrypted,
    /// so nothing unauthenticated stays readable); on [`OpenError::Version`] it holds the
    /// plaintext. [`DataFrame::open`](crate::data::DataFrame::open) does this for a whole
    /// frame and returns the payload's position in it.
    pub fn open<'a>(&self, sealed: &'a mut [u8]) -> Result<(UserDataKind, &'a [u8]), OpenError> {
        let len = sealed.len();
        if len < SEAL_OVERHEAD {
            return Err(OpenError::TooShort(len));
        }
        let (ct, rest) = sealed.split_at_mut(len - TAG_LEN - NONCE_LEN);
        let (tag, nonce) = rest.split_at(TAG_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::TooShort(len))?;
        let tag = Tag::try_from(tag).map_err(|_| OpenError::TooShort(len))?;
        let ct = self
            .0
            .open_in_place_separate_tag(nonce, Aad::empty(), tag, ct, 0..)
            .map_err(|_| OpenError::Auth)?;
        if ct[0] != USER_DATA_VERSION {
            return Err(OpenError::Version(ct[0]));
        }
        let kind = UserDataKind(ct[1]);
        Ok((kind, &ct[USER_HEADER_LEN..]))
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

/// A fresh random nonce from the operating system.
#[cfg(feature = "std")]
pub fn random_nonce() -> Result<[u8; NONCE_LEN], getrandom::Error> {
    random_bytes()
}

/// `N` fresh random bytes from the operating system.
#[cfg(feature = "std")]
pub fn random_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut n = [0; N];
    getrandom::fill(&mut n)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;
    use alloc::vec::Vec;

    fn key() -> SealingKey {
        let a = SecretKey::from_bytes([1; 32]);
        let b = SecretKey::from_bytes([2; 32]);
        SealingKey::new(&a.shared_secret(&b.public_key()))
    }

    #[test]
    fn seal_open_round_trip() {
        let k = key();
        let mut v = Vec::new();
        k.seal([9; 12], UserDataKind::MESSAGE, b"payload", &mut v);
        assert_eq!(v.len(), 7 + SEAL_OVERHEAD);
        assert_eq!(&v[v.len() - 12..], &[9; 12]);
        let (kind, p) = k.open(&mut v).unwrap();
        assert_eq!((kind, p), (UserDataKind::MESSAGE, &b"payload"[..]));
    }

    #[test]
    fn tampering_and_short_input_fail() {
        let k = key();
        let mut v = Vec::new();
        k.seal([3; 12], UserDataKind::L3, b"x", &mut v);
        for i in 0..v.len() {
            let mut t = v.clone();
            t[i] ^= 1;
            assert_eq!(k.open(&mut t), Err(OpenError::Auth), "flip at {i}");
        }
        for n in 0..SEAL_OVERHEAD {
            assert_eq!(k.open(&mut v.clone()[..n]), Err(OpenError::TooShort(n)));
        }
    }
}
