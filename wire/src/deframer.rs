//! Splitting a peer link's byte stream into frames, and decoding one QUIC datagram.
//!
//! [`Deframer::next_frame`] has exactly three outcomes, and keeps them apart:
//!
//! * `Ok(None)`: the buffer does not yet hold a whole frame. Read more and call again. This is
//!   the only meaning of `Ok(None)`.
//! * `Ok(Some(frame))`: one frame was removed from the front of the buffer. A control frame that
//!   is well delimited but wrong inside is a [`Frame::Skipped`] item (also counted): decoding
//!   goes on with the next frame.
//! * `Err(_)`: the outer framing itself is corrupt (unknown version or frame type). Nothing after
//!   it can be trusted: close the link.
//!
//! A data frame comes out as a [`DataFrame`] over a `BytesMut` split off the receive buffer
//! without copying; its hop limit can be rewritten in place and the bytes frozen and queued on
//! the egress link as they are.

use bytes::BytesMut;

use crate::babel::{Skipped, Tlv, control_frame_len, decode_babel_packet};
use crate::data::{DATA_OVERHEAD, DataFrame, frame_len};
use crate::error::DecodeError;
use crate::packet::{OUTER_HEADER_LEN, PacketType, parse_outer_header};

/// One frame from a peer link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<T> {
    /// A data frame, still sealed, over the caller's buffer type.
    Data(DataFrame<T>),
    /// A control frame.
    Control(Tlv),
    /// A control frame that was dropped without losing sync.
    Skipped(Skipped),
}

/// The largest frame the protocol can express (a data frame with a 64 KiB body); a receive
/// buffer never needs to hold more than this to make progress.
pub const MAX_FRAME_LEN: usize = DATA_OVERHEAD + u16::MAX as usize;

/// The stream deframer. It keeps no partial state between calls apart from its counters: all
/// buffering is in the caller's `BytesMut`.
#[derive(Debug, Default, Clone)]
pub struct Deframer {
    stats: DeframeStats,
}

/// What a deframer has seen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeframeStats {
    /// Data frames returned.
    pub data_frames: u64,
    /// Control frames returned.
    pub control_frames: u64,
    /// Control frames skipped (bad Babel header, unknown TLV, malformed TLV).
    pub skipped: u64,
}

impl Deframer {
    /// A new deframer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counters so far.
    pub fn stats(&self) -> DeframeStats {
        self.stats
    }

    /// Removes the next frame from the front of `buf`; see the module docs for the outcomes.
    pub fn next_frame(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame<BytesMut>>, DecodeError> {
        let Some(len) = next_len(buf)? else {
            return Ok(None);
        };
        if buf.len() < len {
            // Make room for the rest of the frame in one go.
            buf.reserve(len - buf.len());
            return Ok(None);
        }
        let bytes = buf.split_to(len);
        Ok(Some(self.count(decode_whole(bytes)?)))
    }

    fn count<T>(&mut self, f: Frame<T>) -> Frame<T> {
        match &f {
            Frame::Data(_) => self.stats.data_frames += 1,
            Frame::Control(_) => self.stats.control_frames += 1,
            Frame::Skipped(_) => self.stats.skipped += 1,
        }
        f
    }
}

/// The length of the frame at the front of `buf`, once enough of its headers are there.
fn next_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    if buf.len() < OUTER_HEADER_LEN {
        return Ok(None);
    }
    match parse_outer_header(buf)? {
        PacketType::DATA if buf.len() >= DATA_OVERHEAD => frame_len(buf).map(Some),
        PacketType::CONTROL if buf.len() >= OUTER_HEADER_LEN + 4 => {
            control_frame_len(buf).map(Some)
        }
        _ => Ok(None),
    }
}

/// Decodes a buffer that holds exactly one frame.
fn decode_whole<T: AsRef<[u8]>>(bytes: T) -> Result<Frame<T>, DecodeError> {
    match parse_outer_header(bytes.as_ref())? {
        PacketType::DATA => DataFrame::new_checked(bytes).map(Frame::Data),
        _ => Ok(
            match decode_babel_packet(&bytes.as_ref()[OUTER_HEADER_LEN..]) {
                Ok(tlv) => Frame::Control(tlv),
                Err(s) => Frame::Skipped(s),
            },
        ),
    }
}

/// Decodes one QUIC datagram, which must hold exactly one whole frame (the reference sends data
/// frames this way, outer header included). No state carries over between datagrams.
pub fn decode_datagram<T: AsRef<[u8]>>(datagram: T) -> Result<Frame<T>, DecodeError> {
    let len = next_len(datagram.as_ref())?.ok_or(DecodeError::UnexpectedEnd)?;
    match datagram.as_ref().len() {
        n if n < len => Err(DecodeError::UnexpectedEnd),
        n if n > len => Err(DecodeError::TrailingData("datagram")),
        _ => decode_whole(datagram),
    }
}
