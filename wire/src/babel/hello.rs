//! Hello (TLV type 4, body 6 bytes).
//!
//! ```text
//! u16 flags     0x8000 = unicast (mycelium always sets it)
//! u16 seqno     per-neighbour Hello seqno
//! u16 interval  centiseconds until the next Hello (mycelium: 2000)
//! ```

use bytes::BufMut;

use crate::coding::{Codec, Reader};
use crate::error::DecodeError;
use crate::types::{Interval, SeqNo};

/// A Hello TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hello {
    /// Flags; [`Hello::UNICAST`] is the only one defined.
    pub flags: u16,
    /// The Hello sequence number.
    pub seqno: SeqNo,
    /// Time until the next Hello.
    pub interval: Interval,
}

impl Hello {
    /// The unicast flag.
    pub const UNICAST: u16 = 0x8000;

    /// A unicast Hello, as mycelium sends them.
    pub fn unicast(seqno: SeqNo, interval: Interval) -> Self {
        Self {
            flags: Self::UNICAST,
            seqno,
            interval,
        }
    }
}

impl Codec for Hello {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            flags: r.u16()?,
            seqno: SeqNo(r.u16()?),
            interval: Interval(r.u16()?),
        })
    }

    fn encode<B: BufMut>(&self, buf: &mut B) {
        buf.put_u16(self.flags);
        buf.put_u16(self.seqno.0);
        buf.put_u16(self.interval.0);
    }

    fn encoded_len(&self) -> usize {
        6
    }
}
