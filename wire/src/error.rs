//! Decoding errors.
//!
//! One small `Copy` error type for every codec in this crate. Errors never carry the offending
//! bytes: callers that want them for a log still hold the buffer.

/// Why a piece of input could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the item did.
    #[error("unexpected end of input")]
    UnexpectedEnd,
    /// A length field is impossible for the item it describes.
    #[error("invalid length {len} for {what}")]
    InvalidLength {
        /// The item whose length is wrong.
        what: &'static str,
        /// The length that was found.
        len: usize,
    },
    /// Bytes were left over after an item that must fill its container exactly.
    #[error("trailing data after {0}")]
    TrailingData(&'static str),
    /// A version byte this implementation does not speak.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// A magic number did not match.
    #[error("bad magic in {0}")]
    BadMagic(&'static str),
    /// A field held a value the protocol does not allow.
    #[error("invalid value for {0}")]
    InvalidValue(&'static str),
    /// A declared length is over the limit the caller set, found before allocating.
    #[error("{what} of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// The item that is too large.
        what: &'static str,
        /// Its declared length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// An address encoding (Babel AE) this implementation does not accept.
    #[error("unsupported address encoding {0}")]
    UnsupportedAe(u8),
    /// A postcard body did not match its schema.
    #[error("malformed body: {0}")]
    Body(&'static str),
}
