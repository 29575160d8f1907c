//! Control frames: a Babel packet (RFC 8966 section 4) holding exactly one TLV, as mycelium
//! adapts it.
//!
//! ```text
//!  outer header (4)   01 01 00 00
//!  byte 0             magic        = 42
//!  byte 1             version      = 3     (RFC 8966 uses 2; mycelium 3)
//!  byte 2-3           body_length  = TLV length + 2   (u16, BE)
//!  byte 4             TLV type
//!  byte 5             TLV length   (body only)
//!  byte 6..           TLV body
//! ```
//!
//! Decoding never lets a bad packet shift the next one: the packet is cut at `body_length`, the
//! TLV at its own length, and each must be consumed exactly. A packet that is well delimited but
//! wrong inside (bad magic or version, unknown TLV, malformed body, extra bytes) becomes a
//! [`Skipped`] value that the caller counts; only a broken outer header is fatal to a link.

mod ae;
mod hello;
mod ihu;
mod route_request;
mod seqno_request;
mod update;

use core::fmt;

use bytes::BufMut;

pub use ae::Ae;
pub use hello::Hello;
pub use ihu::Ihu;
pub use route_request::RouteRequest;
pub use seqno_request::SeqnoRequest;
pub use update::Update;

use crate::coding::{Codec, Reader};
use crate::error::DecodeError;
use crate::packet::{OUTER_HEADER_LEN, PacketType, outer_header};

/// Babel magic byte.
pub const BABEL_MAGIC: u8 = 42;
/// Babel version as mycelium speaks it.
pub const BABEL_VERSION: u8 = 3;
/// Babel packet header length.
pub const BABEL_HEADER_LEN: usize = 4;
/// TLV header length (type and length).
pub const TLV_HEADER_LEN: usize = 2;

/// A TLV type code point (open: unknown values are kept and printed).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TlvType(pub u8);

impl TlvType {
    /// Hello.
    pub const HELLO: Self = Self(4);
    /// IHU.
    pub const IHU: Self = Self(5);
    /// Update.
    pub const UPDATE: Self = Self(8);
    /// Route Request.
    pub const ROUTE_REQUEST: Self = Self(9);
    /// Seqno Request.
    pub const SEQNO_REQUEST: Self = Self(10);
}

impl fmt::Debug for TlvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::HELLO => f.write_str("HELLO"),
            Self::IHU => f.write_str("IHU"),
            Self::UPDATE => f.write_str("UPDATE"),
            Self::ROUTE_REQUEST => f.write_str("ROUTE_REQUEST"),
            Self::SEQNO_REQUEST => f.write_str("SEQNO_REQUEST"),
            Self(v) => write!(f, "TlvType({v:#04x})"),
        }
    }
}

/// One parsed TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tlv {
    /// Hello.
    Hello(Hello),
    /// IHU.
    Ihu(Ihu),
    /// Update.
    Update(Update),
    /// Route Request.
    RouteRequest(RouteRequest),
    /// Seqno Request.
    SeqnoRequest(SeqnoRequest),
}

impl Tlv {
    /// The TLV's type.
    pub fn tlv_type(&self) -> TlvType {
        match self {
            Self::Hello(_) => TlvType::HELLO,
            Self::Ihu(_) => TlvType::IHU,
            Self::Update(_) => TlvType::UPDATE,
            Self::RouteRequest(_) => TlvType::ROUTE_REQUEST,
            Self::SeqnoRequest(_) => TlvType::SEQNO_REQUEST,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Self::Hello(t) => t.encoded_len(),
            Self::Ihu(t) => t.encoded_len(),
            Self::Update(t) => t.encoded_len(),
            Self::RouteRequest(t) => t.encoded_len(),
            Self::SeqnoRequest(t) => t.encoded_len(),
        }
    }

    fn encode_body<B: BufMut>(&self, buf: &mut B) {
        match self {
            Self::Hello(t) => t.encode(buf),
            Self::Ihu(t) => t.encode(buf),
            Self::Update(t) => t.encode(buf),
            Self::RouteRequest(t) => t.encode(buf),
            Self::SeqnoRequest(t) => t.encode(buf),
        }
    }

    /// The length of the whole control frame [`Tlv::encode_frame`] writes.
    pub fn frame_len(&self) -> usize {
        OUTER_HEADER_LEN + BABEL_HEADER_LEN + TLV_HEADER_LEN + self.body_len()
    }

    /// Appends a whole control frame: outer header, Babel header and this one TLV.
    pub fn encode_frame<B: BufMut>(&self, buf: &mut B) {
        // Every TLV body is at most 66 bytes (an Update for a /128), so the casts are exact.
        let body = self.body_len() as u8;
        buf.put_slice(&outer_header(PacketType::CONTROL));
        buf.put_u8(BABEL_MAGIC);
        buf.put_u8(BABEL_VERSION);
        buf.put_u16(u16::from(body) + TLV_HEADER_LEN as u16);
        buf.put_u8(self.tlv_type().0);
        buf.put_u8(body);
        self.encode_body(buf);
    }

    /// Decodes the body of a TLV of type `ty`, which must fill `body` exactly.
    pub fn decode_body(ty: TlvType, body: &[u8]) -> Result<Option<Self>, DecodeError> {
        Ok(Some(match ty {
            TlvType::HELLO => Self::Hello(Hello::decode_exact(body, "hello")?),
            TlvType::IHU => Self::Ihu(Ihu::decode_exact(body, "ihu")?),
            TlvType::UPDATE => Self::Update(Update::decode_exact(body, "update")?),
            TlvType::ROUTE_REQUEST => {
                Self::RouteRequest(RouteRequest::decode_exact(body, "route request")?)
            }
            TlvType::SEQNO_REQUEST => {
                Self::SeqnoRequest(SeqnoRequest::decode_exact(body, "seqno request")?)
            }
            _ => return Ok(None),
        }))
    }
}

/// A control frame that was delimited correctly but dropped: the link stays in sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// The TLV type, if the packet got that far.
    pub tlv_type: Option<TlvType>,
    /// Why it was dropped.
    pub reason: SkipReason,
}

/// Why a control frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// Wrong Babel magic or version (the reference drops these too).
    BabelHeader(DecodeError),
    /// A TLV type this implementation does not know (skipped, as Babel requires).
    UnknownTlv,
    /// The TLV or the packet around it is malformed.
    Malformed(DecodeError),
}

/// The total length of a control frame, from its first 8 bytes (outer and Babel headers).
pub fn control_frame_len(head: &[u8]) -> Result<usize, DecodeError> {
    let b = head.get(6..8).ok_or(DecodeError::UnexpectedEnd)?;
    Ok(OUTER_HEADER_LEN + BABEL_HEADER_LEN + usize::from(u16::from_be_bytes([b[0], b[1]])))
}

/// Parses one Babel packet (header and body, without the outer header) whose length was
/// already delimited by its `body_length`.
pub fn decode_babel_packet(packet: &[u8]) -> Result<Tlv, Skipped> {
    let skip = |tlv_type, reason| Skipped { tlv_type, reason };
    let mut r = Reader::new(packet);
    let header = r.array::<BABEL_HEADER_LEN>();
    let [magic, version, ..] = header.map_err(|e| skip(None, SkipReason::Malformed(e)))?;
    if magic != BABEL_MAGIC {
        return Err(skip(
            None,
            SkipReason::BabelHeader(DecodeError::BadMagic("babel header")),
        ));
    }
    if version != BABEL_VERSION {
        return Err(skip(
            None,
            SkipReason::BabelHeader(DecodeError::UnsupportedVersion(version)),
        ));
    }
    let ty = r
        .u8()
        .map(TlvType)
        .map_err(|e| skip(None, SkipReason::Malformed(e)))?;
    let parsed = (|| {
        let len = usize::from(r.u8()?);
        let body = r.take(len)?;
        // Exactly one TLV per packet: anything after it would be misread by the reference.
        r.finish("babel packet")?;
        Tlv::decode_body(ty, body)
    })();
    match parsed {
        Ok(Some(tlv)) => Ok(tlv),
        Ok(None) => Err(skip(Some(ty), SkipReason::UnknownTlv)),
        Err(e) => Err(skip(Some(ty), SkipReason::Malformed(e))),
    }
}
