//! The 4-byte outer header that starts every frame on a peer link.
//!
//! ```text
//!  byte 0   : version  = 0x01 (anything else: the link is unusable)
//!  byte 1   : type     = 0x00 data | 0x01 control
//!  byte 2-3 : reserved = 0x00 0x00 (ignored on receive, zero on send)
//! ```
//!
//! There is no frame length here: a data frame's length is in its data header, a control
//! frame's in its Babel header.

use core::fmt;

use crate::error::DecodeError;

/// The only outer protocol version.
pub const PROTOCOL_VERSION: u8 = 1;
/// Size of the outer header.
pub const OUTER_HEADER_LEN: usize = 4;

/// The frame type code point (open: unknown values are kept and printed).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketType(pub u8);

impl PacketType {
    /// A data frame (section 2.2).
    pub const DATA: Self = Self(0);
    /// A control frame: a Babel packet with one TLV (section 2.3).
    pub const CONTROL: Self = Self(1);
}

impl fmt::Debug for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::DATA => f.write_str("DATA"),
            Self::CONTROL => f.write_str("CONTROL"),
            Self(v) => write!(f, "PacketType({v:#04x})"),
        }
    }
}

/// Checks an outer header and returns its type. Version and type must be known: the reference
/// tears the link down on anything else, and so do we.
pub fn parse_outer_header(b: &[u8]) -> Result<PacketType, DecodeError> {
    let [version, ty, _, _] = *b
        .first_chunk::<OUTER_HEADER_LEN>()
        .ok_or(DecodeError::UnexpectedEnd)?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    match PacketType(ty) {
        t @ (PacketType::DATA | PacketType::CONTROL) => Ok(t),
        _ => Err(DecodeError::InvalidValue("packet type")),
    }
}

/// The outer header for `ty`.
pub fn outer_header(ty: PacketType) -> [u8; OUTER_HEADER_LEN] {
    [PROTOCOL_VERSION, ty.0, 0, 0]
}
