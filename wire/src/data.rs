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

use core::net::Ipv6Addr;

use bytes::BufMut;

use crate::DecodeError;
use crate::packet::{OUTER_HEADER_LEN, PacketType, outer_header, parse_outer_header};

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

    /// Appends a whole frame with `body`. The body must fit in a `u16`.
    pub fn emit_frame<B: BufMut>(&self, body: &[u8], buf: &mut B) -> Result<(), DecodeError> {
        let len = u16::try_from(body.len()).map_err(|_| DecodeError::TooLarge {
            what: "data body",
            len: body.len(),
            max: MAX_DATA_BODY,
        })?;
        self.emit(len, buf);
        buf.put_slice(body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
