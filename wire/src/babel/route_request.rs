//! Route Request (TLV type 9, body `3 + ceil(plen / 8)` bytes).
//!
//! ```text
//! u8  generation  mycelium's extension: +1 per forwarding hop, at most 16
//! u8  AE          0 = wildcard (full table dump, plen 0) | 2 = IPv6
//! u8  plen
//! prefix          ceil(plen / 8) bytes
//! ```

use bytes::BufMut;

use super::ae::{Ae, decode_prefix, encode_prefix};
use crate::coding::{Codec, Reader};
use crate::error::DecodeError;
use crate::types::Subnet;

/// A Route Request TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteRequest {
    /// How many times the request was forwarded.
    pub generation: u8,
    /// The requested prefix; `None` asks for every route (wildcard).
    pub prefix: Option<Subnet>,
}

impl RouteRequest {
    /// The generation past which a request is no longer forwarded.
    pub const MAX_GENERATION: u8 = 16;
}

impl Codec for RouteRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let generation = r.u8()?;
        let ae = Ae(r.u8()?);
        let plen = r.u8()?;
        let prefix = match ae {
            Ae::WILDCARD if plen == 0 => None,
            _ => Some(decode_prefix(r, ae, plen)?),
        };
        Ok(Self { generation, prefix })
    }

    fn encode<B: BufMut>(&self, buf: &mut B) {
        buf.put_u8(self.generation);
        match &self.prefix {
            None => buf.put_slice(&[Ae::WILDCARD.0, 0]),
            Some(p) => {
                buf.put_u8(Ae::for_subnet(p).0);
                buf.put_u8(p.prefix_len());
                encode_prefix(p, buf);
            }
        }
    }

    fn encoded_len(&self) -> usize {
        3 + self.prefix.map_or(0, |p| p.wire_prefix_len())
    }
}
