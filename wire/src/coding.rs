//! A bounds-checked reader over a byte slice, and small writing helpers.
//!
//! Every read checks what is left before it takes anything, so a short or lying input yields
//! [`DecodeError::UnexpectedEnd`] and never a panic. Length-prefixed items are decoded from a
//! [`Reader::sub`] reader of exactly their declared length, and [`Reader::finish`] insists that
//! it was consumed whole: a malformed item can't shift the one after it.

use core::net::{Ipv4Addr, Ipv6Addr};

use bytes::BufMut;

use crate::error::DecodeError;

/// A cursor over a borrowed byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The bytes that are left, without consuming them.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::UnexpectedEnd);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// A reader over the next `n` bytes, which are consumed from this one.
    pub fn sub(&mut self, n: usize) -> Result<Self, DecodeError> {
        self.take(n).map(Self::new)
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads a `u8`.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        self.array::<1>().map(|[b]| b)
    }

    /// Reads a big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    /// Reads a big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    /// Reads a big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }

    /// Reads an IPv6 address.
    pub fn ipv6(&mut self) -> Result<Ipv6Addr, DecodeError> {
        self.array::<16>().map(Ipv6Addr::from)
    }

    /// Reads an IPv4 address.
    pub fn ipv4(&mut self) -> Result<Ipv4Addr, DecodeError> {
        self.array::<4>().map(Ipv4Addr::from)
    }

    /// Succeeds only if nothing is left; `what` names the container in the error.
    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        match self.buf.is_empty() {
            true => Ok(()),
            false => Err(DecodeError::TrailingData(what)),
        }
    }
}

/// A wire item with a fixed, infallible encoding and a checked decoding.
pub trait Codec: Sized {
    /// Decodes one item from the front of `r`.
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
    /// Appends the item's encoding to `buf`.
    fn encode<B: BufMut>(&self, buf: &mut B);
    /// The number of bytes [`Codec::encode`] writes.
    fn encoded_len(&self) -> usize;

    /// Decodes an item that must fill `bytes` exactly.
    fn decode_exact(bytes: &[u8], what: &'static str) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let item = Self::decode(&mut r)?;
        r.finish(what)?;
        Ok(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_check_remaining() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Ok(0x0102));
        assert_eq!(r.u16(), Err(DecodeError::UnexpectedEnd));
        // A failed read consumes nothing.
        assert_eq!(r.u8(), Ok(3));
        assert_eq!(r.finish("x"), Ok(()));
    }

    #[test]
    fn sub_reader_is_bounded() {
        let mut r = Reader::new(&[0, 0, 0, 9, 7]);
        let mut sub = r.sub(4).unwrap();
        assert_eq!(sub.u32(), Ok(9));
        assert_eq!(sub.u8(), Err(DecodeError::UnexpectedEnd));
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(
            Reader::new(&[1]).finish("t"),
            Err(DecodeError::TrailingData("t"))
        );
    }
}
