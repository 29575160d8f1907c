//! Data frames: a zero-copy view for forwarding and an owned representation for building.
//!
//! ```text
//!  0               1               2               3
//! +---------------+---------------+---------------+---------------+
//! | 0x01 version  | 0x00 data     |    reserved (0, 0)            |  outer header
//! +---------------+---------------+---------------+---------------+
//! | reserved (0)  |      body length (u16, BE)    |   hop limit   |  data header
//! +---------------+---------------+---------------+---------------+
//! |                   source IPv6 (16 bytes)                      |
//! |                 destination IPv6 (16 bytes)                   |
//! +---------------------------------------------------------------+
//! |         body (length bytes): sealed user data, see `seal`     |
//! ```
//!
//! [`DataFrame`] wraps a buffer that holds exactly one whole frame, outer header included, so a
//! forwarding router can rewrite the hop limit in place and queue the very same bytes on the
//! egress link. It never allocates.
//!
//! Frames for and from this node go through one pair of calls, both in place:
//! [`DataHeader::emit_sealed`] appends a whole frame whose body is sealed user data, and
//! [`DataFrame::open`] opens one and returns the payload's byte range in the frame.
//!
//! ```text
//! frame:  outer + data header (40) | user-data header (4) | payload | tag (16) | nonce (12)
//!                                   '------ encrypted in place ------'
//! ```

use core::net::Ipv6Addr;
use core::ops::Range;

use bytes::BufMut;

use crate::error::DecodeError;
use crate::packet::{OUTER_HEADER_LEN, PacketType, outer_header, parse_outer_header};
use crate::seal::{
    NONCE_LEN, OpenError, SEAL_OVERHEAD, SealingKey, TAG_LEN, USER_DATA_VERSION, USER_HEADER_LEN,
    UserDataKind,
};

/// Length of the data header after the outer header.
pub const DATA_HEADER_LEN: usize = 36;
/// Bytes of framing in front of a data frame's body.
pub const DATA_OVERHEAD: usize = OUTER_HEADER_LEN + DATA_HEADER_LEN;
/// The largest body a data frame can carry.
pub const MAX_DATA_BODY: usize = u16::MAX as usize;

mod field {
    use core::ops::Range;

    pub(super) const LEN: Range<usize> = 5..7;
    pub(super) const HOP_LIMIT: usize = 7;
    pub(super) const SRC: Range<usize> = 8..24;
    pub(super) const DST: Range<usize> = 24..40;
    pub(super) const BODY: usize = 40;
}

/// The total frame length announced by a buffer that starts with a data frame's first 40 bytes.
pub fn frame_len(header: &[u8]) -> Result<usize, DecodeError> {
    let len = header.get(field::LEN).ok_or(DecodeError::UnexpectedEnd)?;
    Ok(DATA_OVERHEAD + usize::from(u16::from_be_bytes([len[0], len[1]])))
}

/// A view of one whole data frame (outer header included) in a caller's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFrame<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> DataFrame<T> {
    /// Wraps `buf` after checking that it holds exactly one well-formed data frame.
    pub fn new_checked(buf: T) -> Result<Self, DecodeError> {
        let b = buf.as_ref();
        if parse_outer_header(b)? != PacketType::DATA {
            return Err(DecodeError::InvalidValue("packet type"));
        }
        if b.len() < DATA_OVERHEAD {
            return Err(DecodeError::UnexpectedEnd);
        }
        let want = frame_len(b)?;
        if b.len() < want {
            return Err(DecodeError::UnexpectedEnd);
        }
        if b.len() > want {
            return Err(DecodeError::TrailingData("data frame"));
        }
        Ok(Self { buf })
    }

    /// The declared body length.
    pub fn body_len(&self) -> u16 {
        let b = &self.buf.as_ref()[field::LEN];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buf.as_ref()[field::HOP_LIMIT]
    }

    /// The source overlay address.
    pub fn src(&self) -> Ipv6Addr {
        ip(&self.buf.as_ref()[field::SRC])
    }

    /// The destination overlay address.
    pub fn dst(&self) -> Ipv6Addr {
        ip(&self.buf.as_ref()[field::DST])
    }

    /// The body: on the reference, always sealed user data.
    pub fn body(&self) -> &[u8] {
        &self.buf.as_ref()[field::BODY..]
    }

    /// The whole frame.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buf
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> DataFrame<T> {
    /// Rewrites the hop limit in place.
    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buf.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    /// The body, mutable (to open sealed data in place).
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut()[field::BODY..]
    }

    /// Opens the sealed body in place with `key`. Returns the user-data kind and the payload's
    /// byte range within the whole frame ([`Self::as_bytes`]): the plaintext stays where it was,
    /// so an owned payload is `buf.freeze().slice(range)` with no copy.
    ///
    /// On [`OpenError::TooShort`] the frame is unchanged; on [`OpenError::Auth`] the
    /// ciphertext is zeroed (the header, tag and nonce are as received); on
    /// [`OpenError::Version`] the body has been decrypted.
    pub fn open(&mut self, key: &SealingKey) -> Result<(UserDataKind, Range<usize>), OpenError> {
        let (kind, payload) = key.open(self.body_mut())?;
        let start = field::BODY + USER_HEADER_LEN;
        Ok((kind, start..start + payload.len()))
    }
}

fn ip(b: &[u8]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(b);
    Ipv6Addr::from(o)
}

/// An owned data frame header, for building frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataHeader {
    /// Hop limit.
    pub hop_limit: u8,
    /// Source overlay address.
    pub src: Ipv6Addr,
    /// Destination overlay address.
    pub dst: Ipv6Addr,
}

impl DataHeader {
    /// Parses the header of a checked frame view.
    pub fn parse<T: AsRef<[u8]>>(f: &DataFrame<T>) -> Self {
        Self {
            hop_limit: f.hop_limit(),
            src: f.src(),
            dst: f.dst(),
        }
    }

    /// Appends the outer header and data header for a body of `body_len` bytes.
    pub fn emit<B: BufMut>(&self, body_len: u16, buf: &mut B) {
        buf.put_slice(&outer_header(PacketType::DATA));
        buf.put_u8(0);
        buf.put_u16(body_len);
        buf.put_u8(self.hop_limit);
        buf.put_slice(&self.src.octets());
        buf.put_slice(&self.dst.octets());
    }

    /// Appends a whole frame with `body`, which is already sealed (forwarding, or a body kept
    /// from a frame). The body must fit in a `u16`; nothing is appended otherwise.
    pub fn emit_frame<B: BufMut>(&self, body: &[u8], buf: &mut B) -> Result<(), DecodeError> {
        self.emit(body_len(body.len())?, buf);
        buf.put_slice(body);
        Ok(())
    }

    /// Appends a whole frame whose body is the concatenation of `parts`, sealed as `kind` with
    /// `key` and `nonce`. Encrypts in place in `out`: the header goes out with the final body
    /// length, then user-data header and parts, which are sealed where they lie before tag and
    /// nonce follow. The sealed body (payload plus [`SEAL_OVERHEAD`]) must fit in a `u16`;
    /// nothing is appended otherwise.
    ///
    /// `out` must be a growable buffer whose `as_mut()` is everything written so far, such as
    /// `Vec<u8>` or `BytesMut`.
    pub fn emit_sealed<B: BufMut + AsMut<[u8]>>(
        &self,
        key: &SealingKey,
        nonce: [u8; NONCE_LEN],
        kind: UserDataKind,
        parts: &[&[u8]],
        out: &mut B,
    ) -> Result<(), DecodeError> {
        let sealed = parts
            .iter()
            .try_fold(SEAL_OVERHEAD, |n, p| n.checked_add(p.len()))
            .unwrap_or(usize::MAX);
        self.emit(body_len(sealed)?, out);
        key.seal_parts(nonce, kind, parts, out);
        Ok(())
    }
}

/// Where the payload starts in a frame laid out for [`DataHeader::seal_in_place`]: after the
/// outer and data headers and the user-data header.
pub const SEALED_PAYLOAD_OFFSET: usize = DATA_OVERHEAD + USER_HEADER_LEN;

/// What a frame laid out for [`DataHeader::seal_in_place`] holds besides its payload.
pub const SEALED_FRAME_OVERHEAD: usize = DATA_OVERHEAD + SEAL_OVERHEAD;

impl DataHeader {
    /// Turns `frame` into a whole sealed data frame without moving its payload: `frame` is
    /// room for the headers ([`SEALED_PAYLOAD_OFFSET`] bytes), then the payload, then room for
    /// tag and nonce (`TAG_LEN + NONCE_LEN` bytes). Headers, user-data header, tag and nonce
    /// are written into the room and the payload is encrypted where it lies, so a packet read
    /// straight into a buffer at [`SEALED_PAYLOAD_OFFSET`] leaves as a frame with no copy. The
    /// bytes are those [`Self::emit_sealed`] appends for the same payload. Fails, writing
    /// nothing, if `frame` is shorter than [`SEALED_FRAME_OVERHEAD`] or its body does not fit
    /// a `u16`.
    pub fn seal_in_place(
        &self,
        key: &SealingKey,
        nonce: [u8; NONCE_LEN],
        kind: UserDataKind,
        frame: &mut [u8],
    ) -> Result<(), DecodeError> {
        if frame.len() < SEALED_FRAME_OVERHEAD {
            return Err(DecodeError::InvalidLength {
                what: "frame to seal",
                len: frame.len(),
            });
        }
        let body = body_len(frame.len() - DATA_OVERHEAD)?;
        let (head, rest) = frame.split_at_mut(DATA_OVERHEAD);
        let mut h = &mut head[..];
        self.emit(body, &mut h);
        let plain_len = rest.len() - TAG_LEN - NONCE_LEN;
        let (plain, trailer) = rest.split_at_mut(plain_len);
        plain[..USER_HEADER_LEN].copy_from_slice(&[USER_DATA_VERSION, kind.0, 0, 0]);
        let tag = key.seal_in_place(nonce, plain);
        trailer[..TAG_LEN].copy_from_slice(&tag);
        trailer[TAG_LEN..].copy_from_slice(&nonce);
        Ok(())
    }
}

/// `len` as a data-frame body length.
fn body_len(len: usize) -> Result<u16, DecodeError> {
    u16::try_from(len).map_err(|_| DecodeError::TooLarge {
        what: "data body",
        len,
        max: MAX_DATA_BODY,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;
    use alloc::vec::Vec;

    fn frame(body: &[u8]) -> Vec<u8> {
        let h = DataHeader {
            hop_limit: 64,
            src: "4a9::1".parse().unwrap(),
            dst: "5ff::2".parse().unwrap(),
        };
        let mut v = Vec::new();
        h.emit_frame(body, &mut v).unwrap();
        v
    }

    #[test]
    fn view_reads_and_rewrites_in_place() {
        let mut v = frame(b"hello");
        let mut f = DataFrame::new_checked(&mut v[..]).unwrap();
        assert_eq!(f.body_len(), 5);
        assert_eq!(f.hop_limit(), 64);
        assert_eq!(f.src(), "4a9::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(f.dst(), "5ff::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(f.body(), b"hello");
        f.set_hop_limit(63);
        assert_eq!(v[7], 63);
    }

    #[test]
    fn every_prefix_rejected_and_trailing_rejected() {
        let v = frame(b"abc");
        for n in 0..v.len() {
            assert!(DataFrame::new_checked(&v[..n]).is_err(), "prefix {n}");
        }
        let mut long = v.clone();
        long.push(0);
        assert_eq!(
            DataFrame::new_checked(&long[..]),
            Err(DecodeError::TrailingData("data frame"))
        );
        let mut ctl = v.clone();
        ctl[1] = 1;
        assert!(DataFrame::new_checked(&ctl[..]).is_err());
    }

    #[test]
    fn oversize_body_is_an_error() {
        let h = DataHeader {
            hop_limit: 1,
            src: Ipv6Addr::UNSPECIFIED,
            dst: Ipv6Addr::UNSPECIFIED,
        };
        let big = alloc::vec![0u8; MAX_DATA_BODY + 1];
        assert!(h.emit_frame(&big, &mut Vec::new()).is_err());
    }

    fn key() -> SealingKey {
        let a = SecretKey::from_bytes([1; 32]);
        let b = SecretKey::from_bytes([2; 32]);
        SealingKey::new(&a.shared_secret(&b.public_key()))
    }

    fn header() -> DataHeader {
        DataHeader {
            hop_limit: 63,
            src: "4a9::1".parse().unwrap(),
            dst: "5ff::2".parse().unwrap(),
        }
    }

    fn sealed(parts: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        header()
            .emit_sealed(&key(), [7; NONCE_LEN], UserDataKind::MESSAGE, parts, &mut v)
            .unwrap();
        v
    }

    #[test]
    fn emit_sealed_then_open_gives_payload_range() {
        let mut v = sealed(&[b"hello ", b"world"]);
        assert_eq!(v.len(), DATA_OVERHEAD + 11 + SEAL_OVERHEAD);
        let mut f = DataFrame::new_checked(&mut v[..]).unwrap();
        assert_eq!(usize::from(f.body_len()), 11 + SEAL_OVERHEAD);
        assert_eq!(DataHeader::parse(&f), header());
        let (kind, range) = f.open(&key()).unwrap();
        assert_eq!(kind, UserDataKind::MESSAGE);
        assert_eq!(
            range,
            DATA_OVERHEAD + USER_HEADER_LEN..DATA_OVERHEAD + USER_HEADER_LEN + 11
        );
        assert_eq!(&f.as_bytes()[range], b"hello world");
    }

    #[test]
    fn seal_in_place_writes_what_emit_sealed_appends() {
        for payload in [&b""[..], b"x", &[0x5a; 1400][..]] {
            let mut frame = alloc::vec![0xee; SEALED_FRAME_OVERHEAD + payload.len()];
            frame[SEALED_PAYLOAD_OFFSET..][..payload.len()].copy_from_slice(payload);
            header()
                .seal_in_place(&key(), [7; NONCE_LEN], UserDataKind::MESSAGE, &mut frame)
                .unwrap();
            assert_eq!(frame, sealed(&[payload]), "{} bytes", payload.len());
        }
    }

    #[test]
    fn seal_in_place_refuses_frames_without_room() {
        let mut short = alloc::vec![1; SEALED_FRAME_OVERHEAD - 1];
        let r = header().seal_in_place(&key(), [7; NONCE_LEN], UserDataKind::L3, &mut short);
        assert!(r.is_err());
        assert_eq!(
            short,
            alloc::vec![1; SEALED_FRAME_OVERHEAD - 1],
            "nothing written"
        );
        let mut huge = alloc::vec![0; DATA_OVERHEAD + MAX_DATA_BODY + 1];
        let r = header().seal_in_place(&key(), [7; NONCE_LEN], UserDataKind::L3, &mut huge);
        assert!(r.is_err());
        assert!(huge.iter().all(|b| *b == 0), "nothing written");
    }

    #[test]
    fn emit_sealed_parts_are_concatenated() {
        assert_eq!(sealed(&[b"ab", b"cd"]), sealed(&[b"abcd"]));
        assert_eq!(sealed(&[b"", b"abcd", b""]), sealed(&[b"abcd"]));
        assert_eq!(sealed(&[]), sealed(&[b""]));
    }

    #[test]
    fn emit_sealed_equals_seal_then_emit_frame() {
        let mut body = Vec::new();
        key().seal([7; NONCE_LEN], UserDataKind::MESSAGE, b"payload", &mut body);
        let mut two_step = Vec::new();
        header().emit_frame(&body, &mut two_step).unwrap();
        assert_eq!(sealed(&[b"payload"]), two_step);
    }

    #[test]
    fn emit_sealed_appends_to_what_is_there() {
        let mut v = alloc::vec![0xaa; 3];
        header()
            .emit_sealed(
                &key(),
                [7; NONCE_LEN],
                UserDataKind::MESSAGE,
                &[b"x"],
                &mut v,
            )
            .unwrap();
        assert_eq!(&v[..3], &[0xaa; 3]);
        assert_eq!(v[3..], sealed(&[b"x"]));
    }

    #[test]
    fn emit_sealed_too_large_appends_nothing() {
        let max = alloc::vec![0u8; MAX_DATA_BODY - SEAL_OVERHEAD];
        let mut v = Vec::new();
        header()
            .emit_sealed(&key(), [1; NONCE_LEN], UserDataKind::L3, &[&max], &mut v)
            .unwrap();
        assert_eq!(v.len(), DATA_OVERHEAD + MAX_DATA_BODY);
        let mut f = DataFrame::new_checked(&mut v[..]).unwrap();
        assert_eq!(f.open(&key()).unwrap().1.len(), max.len());

        let mut v = alloc::vec![0xaa; 5];
        let err = header().emit_sealed(
            &key(),
            [1; NONCE_LEN],
            UserDataKind::L3,
            &[&max, b"x"],
            &mut v,
        );
        assert_eq!(
            err,
            Err(DecodeError::TooLarge {
                what: "data body",
                len: MAX_DATA_BODY + 1,
                max: MAX_DATA_BODY
            })
        );
        assert_eq!(v, [0xaa; 5], "nothing appended");
    }

    #[test]
    fn tampered_frame_fails_to_open_and_reveals_nothing() {
        let v = sealed(&[b"secret"]);
        let ct_end = v.len() - TAG_LEN - NONCE_LEN;
        // The data header is not authenticated (as on the reference); every body byte is.
        for i in DATA_OVERHEAD..v.len() {
            let mut t = v.clone();
            t[i] ^= 0x10;
            let mut f = DataFrame::new_checked(&mut t[..]).unwrap();
            assert_eq!(f.open(&key()), Err(OpenError::Auth), "flip at {i}");
            let b = f.as_bytes();
            assert!(
                b[DATA_OVERHEAD..ct_end].iter().all(|&x| x == 0),
                "zeroed, flip at {i}"
            );
            assert_eq!(b[..DATA_OVERHEAD], v[..DATA_OVERHEAD], "header as received");
            assert!(
                !b.windows(6).any(|w| w == b"secret"),
                "no plaintext, flip at {i}"
            );
        }
        let other = SealingKey::new(
            &SecretKey::from_bytes([3; 32])
                .shared_secret(&SecretKey::from_bytes([2; 32]).public_key()),
        );
        let mut t = v.clone();
        let mut f = DataFrame::new_checked(&mut t[..]).unwrap();
        assert_eq!(f.open(&other), Err(OpenError::Auth));
        // A body too short to be sealed.
        let mut short = Vec::new();
        header()
            .emit_frame(&[0; SEAL_OVERHEAD - 1], &mut short)
            .unwrap();
        let mut f = DataFrame::new_checked(&mut short[..]).unwrap();
        assert_eq!(f.open(&key()), Err(OpenError::TooShort(SEAL_OVERHEAD - 1)));
    }
}
