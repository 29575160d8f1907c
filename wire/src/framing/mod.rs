//! hyphae's internal binary framing: between an application (the edge) and its router over the
//! router's local socket, and between edges over the overlay.
//!
//! ```text
//!  byte 0-1   magic    "HY" (0x48 0x59)
//!  byte 2     version  1
//!  byte 3     kind     which message the body holds (see [`Kind`])
//!  byte 4-7   length   body length, u32 BE, checked against the caller's limit before any
//!                      buffer is sized for it
//!  byte 8..   body     postcard encoding of the message for `kind`
//! ```
//!
//! Postcard is not self-describing, so the schema lives in this crate: message enums and
//! structs are append-only (new variants and kinds at the end, fields never reordered), the
//! version byte changes with any incompatible change, and golden tests pin each message's bytes.
//! A body must be consumed exactly: trailing bytes are an error.
//!
//! Errors are kept apart as in the peer deframer: [`split_frame`] fails only when the header is
//! corrupt or over the limit (close the connection); a body that does not decode for its kind is
//! a [`DecodeError`] from [`Message::decode`] for that frame alone, and the stream stays usable.

mod msg;

use core::fmt;

use alloc::vec::Vec;

use bytes::{BufMut, Bytes, BytesMut};
use postcard::ser_flavors::Flavor;

pub use msg::*;

use crate::error::DecodeError;

/// Magic bytes.
pub const MAGIC: [u8; 2] = *b"HY";
/// The framing version this crate speaks.
pub const VERSION: u8 = 1;
/// Header length.
pub const HEADER_LEN: usize = 8;
/// Default body limit: a 64 MiB payload plus room for its envelope.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024 * 1024 + 64 * 1024;

/// A message kind code point (open: unknown kinds are reported with their value).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kind(pub u8);

impl Kind {
    /// [`Push`]: an application sends a message.
    pub const PUSH: Self = Self(0x01);
    /// [`Pushed`]: the router accepted a push.
    pub const PUSHED: Self = Self(0x02);
    /// [`Subscribe`]: deliver messages on a topic to this connection.
    pub const SUBSCRIBE: Self = Self(0x03);
    /// [`Deliver`]: a message (or a reply) for the application.
    pub const DELIVER: Self = Self(0x04);
    /// [`Reply`]: the application answers a delivered message.
    pub const REPLY: Self = Self(0x05);
    /// [`StatusQuery`]: ask for a sent message's state.
    pub const STATUS_QUERY: Self = Self(0x06);
    /// [`Status`]: a sent message's state.
    pub const STATUS: Self = Self(0x07);
    /// [`ErrorMsg`]: a request failed.
    pub const ERROR: Self = Self(0x08);
    /// [`Envelope`]: a batch of relay items from the edge that made the requests (requests,
    /// their bodies, cancels, windows for response bodies, pings).
    pub const ENVELOPE: Self = Self(0x20);
    /// [`Envelope`]: a batch of relay items from the edge that serves the requests
    /// (responses, their bodies, refusals, windows for request bodies, pongs).
    pub const RESPONSE_ENVELOPE: Self = Self(0x21);
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Self::PUSH => "PUSH",
            Self::PUSHED => "PUSHED",
            Self::SUBSCRIBE => "SUBSCRIBE",
            Self::DELIVER => "DELIVER",
            Self::REPLY => "REPLY",
            Self::STATUS_QUERY => "STATUS_QUERY",
            Self::STATUS => "STATUS",
            Self::ERROR => "ERROR",
            Self::ENVELOPE => "ENVELOPE",
            Self::RESPONSE_ENVELOPE => "RESPONSE_ENVELOPE",
            Self(v) => return write!(f, "Kind({v:#04x})"),
        };
        f.write_str(name)
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The body's kind.
    pub kind: Kind,
    /// The body's length.
    pub len: usize,
}

/// Parses the header at the front of `buf`: `Ok(None)` if fewer than 8 bytes are there. Bad
/// magic, an unknown version or a length over `max_body` are errors that end the stream.
pub fn decode_header(buf: &[u8], max_body: usize) -> Result<Option<FrameHeader>, DecodeError> {
    let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    if h[..2] != MAGIC {
        return Err(DecodeError::BadMagic("frame header"));
    }
    if h[2] != VERSION {
        return Err(DecodeError::UnsupportedVersion(h[2]));
    }
    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if len > max_body {
        return Err(DecodeError::TooLarge {
            what: "frame body",
            len,
            max: max_body,
        });
    }
    Ok(Some(FrameHeader {
        kind: Kind(h[3]),
        len,
    }))
}

/// Removes the next whole frame from `buf` and returns its kind and body, without copying.
/// `Ok(None)` means only "need more bytes".
pub fn split_frame(
    buf: &mut BytesMut,
    max_body: usize,
) -> Result<Option<(Kind, Bytes)>, DecodeError> {
    let Some(h) = decode_header(buf, max_body)? else {
        return Ok(None);
    };
    let total = HEADER_LEN + h.len;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total);
    let body = frame.split_off(HEADER_LEN).freeze();
    Ok(Some((h.kind, body)))
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The body would be over the limit.
    #[error("frame body of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// The body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The serializer refused the value.
    #[error("serialization failed")]
    Serialize,
}

/// A postcard output flavor that appends to any growable buffer.
struct Append<'a, B>(&'a mut B);

impl<B: BufMut> Flavor for Append<'_, B> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.put_u8(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.put_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends one frame (header and postcard body) for `value` of `kind` to `out`. On error `out`
/// is left as it was.
pub fn encode_frame<T, B>(
    kind: Kind,
    value: &T,
    max_body: usize,
    out: &mut B,
) -> Result<(), EncodeError>
where
    T: serde::Serialize + ?Sized,
    B: BufMut + AsMut<[u8]> + Truncate,
{
    let start = out.as_mut().len();
    out.put_slice(&MAGIC);
    out.put_u8(VERSION);
    out.put_u8(kind.0);
    out.put_u32(0);
    if postcard::serialize_with_flavor(value, Append(out)).is_err() {
        out.truncate_to(start);
        return Err(EncodeError::Serialize);
    }
    let len = out.as_mut().len() - start - HEADER_LEN;
    if len > max_body || u32::try_from(len).is_err() {
        out.truncate_to(start);
        return Err(EncodeError::TooLarge { len, max: max_body });
    }
    out.as_mut()[start + 4..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Buffers that can be cut back after a failed append.
pub trait Truncate {
    /// Shortens the buffer to `len` bytes.
    fn truncate_to(&mut self, len: usize);
}

impl Truncate for BytesMut {
    fn truncate_to(&mut self, len: usize) {
        self.truncate(len);
    }
}

impl Truncate for Vec<u8> {
    fn truncate_to(&mut self, len: usize) {
        self.truncate(len);
    }
}

/// Decodes a postcard body that must be consumed exactly.
pub fn decode_body<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, DecodeError> {
    let (v, rest) =
        postcard::take_from_bytes(body).map_err(|e| DecodeError::Body(postcard_reason(&e)))?;
    match rest.is_empty() {
        true => Ok(v),
        false => Err(DecodeError::TrailingData("frame body")),
    }
}

fn postcard_reason(e: &postcard::Error) -> &'static str {
    use postcard::Error as E;
    match e {
        E::DeserializeUnexpectedEnd => "unexpected end",
        E::DeserializeBadVarint => "bad varint",
        E::DeserializeBadBool => "bad bool",
        E::DeserializeBadChar | E::DeserializeBadUtf8 => "bad utf-8",
        E::DeserializeBadOption => "bad option tag",
        E::DeserializeBadEnum => "bad enum variant",
        E::DeserializeBadEncoding => "bad encoding",
        _ => "schema mismatch",
    }
}
