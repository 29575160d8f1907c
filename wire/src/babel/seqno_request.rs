//! Seqno Request (TLV type 10, body `46 + ceil(plen / 8)` bytes).
//!
//! ```text
//! u8  AE         2
//! u8  plen
//! u16 seqno      the requested seqno (known seqno + 1)
//! u8  hop_count  initially 64; 0 is invalid
//! u8  reserved   0
//! router_id      40 bytes (RFC 8966: 8)
//! prefix         ceil(plen / 8) bytes
//! ```

use bytes::BufMut;

use super::ae::{Ae, decode_prefix, encode_prefix};
use crate::coding::{Codec, Reader};
use crate::error::DecodeError;
use crate::router_id::RouterId;
use crate::types::{SeqNo, Subnet};

/// A Seqno Request TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqnoRequest {
    /// The requested sequence number.
    pub seqno: SeqNo,
    /// Remaining hops; never 0 on the wire.
    pub hop_count: u8,
    /// The source whose seqno is requested.
    pub router_id: RouterId,
    /// The prefix.
    pub prefix: Subnet,
}

impl SeqnoRequest {
    /// The hop count of a new request.
    pub const INITIAL_HOP_COUNT: u8 = 64;
}

impl Codec for SeqnoRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let ae = Ae(r.u8()?);
        let plen = r.u8()?;
        let seqno = SeqNo(r.u16()?);
        let hop_count = r.u8()?;
        let _reserved = r.u8()?;
        let router_id = RouterId(r.array()?);
        if hop_count == 0 {
            return Err(DecodeError::InvalidValue("seqno request hop count"));
        }
        let prefix = decode_prefix(r, ae, plen)?;
        Ok(Self {
            seqno,
            hop_count,
            router_id,
            prefix,
        })
    }

    fn encode<B: BufMut>(&self, buf: &mut B) {
        buf.put_u8(Ae::for_subnet(&self.prefix).0);
        buf.put_u8(self.prefix.prefix_len());
        buf.put_u16(self.seqno.0);
        buf.put_u8(self.hop_count);
        buf.put_u8(0);
        buf.put_slice(&self.router_id.0);
        encode_prefix(&self.prefix, buf);
    }

    fn encoded_len(&self) -> usize {
        6 + RouterId::LEN + self.prefix.wire_prefix_len()
    }
}
