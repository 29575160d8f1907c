//! Update (TLV type 8, body `50 + ceil(plen / 8)` bytes).
//!
//! ```text
//! u8  AE         2 (IPv6)
//! u8  flags      0 (flags are unused by mycelium)
//! u8  plen       prefix length (64 for node subnets)
//! u8  omitted    0 (no prefix compression; ignored on receive)
//! u16 interval   centiseconds until the next Update for this prefix
//! u16 seqno      the source's seqno
//! u16 metric     0xFFFF = retraction
//! prefix         ceil(plen / 8) bytes
//! router_id      40 bytes (mycelium's extension: RFC 8966 uses a separate Router-Id TLV)
//! ```

use bytes::BufMut;

use super::ae::{Ae, decode_prefix, encode_prefix};
use crate::coding::{Codec, Reader};
use crate::error::DecodeError;
use crate::router_id::RouterId;
use crate::types::{Interval, Metric, SeqNo, Subnet};

/// An Update TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Update {
    /// Flags byte (unused by mycelium, carried as is).
    pub flags: u8,
    /// Interval until the next Update for this prefix (0 for a non-repeating retraction).
    pub interval: Interval,
    /// The source's sequence number.
    pub seqno: SeqNo,
    /// The advertised metric.
    pub metric: Metric,
    /// The announced prefix.
    pub subnet: Subnet,
    /// The source of the route.
    pub router_id: RouterId,
}

impl Update {
    /// Whether this Update retracts the route.
    pub fn is_retraction(&self) -> bool {
        self.metric.is_infinite()
    }
}

impl Codec for Update {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let ae = Ae(r.u8()?);
        let flags = r.u8()?;
        let plen = r.u8()?;
        let _omitted = r.u8()?;
        let interval = Interval(r.u16()?);
        let seqno = SeqNo(r.u16()?);
        let metric = Metric(r.u16()?);
        let subnet = decode_prefix(r, ae, plen)?;
        let router_id = RouterId(r.array()?);
        Ok(Self {
            flags,
            interval,
            seqno,
            metric,
            subnet,
            router_id,
        })
    }

    fn encode<B: BufMut>(&self, buf: &mut B) {
        buf.put_u8(Ae::for_subnet(&self.subnet).0);
        buf.put_u8(self.flags);
        buf.put_u8(self.subnet.prefix_len());
        buf.put_u8(0);
        buf.put_u16(self.interval.0);
        buf.put_u16(self.seqno.0);
        buf.put_u16(self.metric.0);
        encode_prefix(&self.subnet, buf);
        buf.put_slice(&self.router_id.0);
    }

    fn encoded_len(&self) -> usize {
        10 + self.subnet.wire_prefix_len() + RouterId::LEN
    }
}
