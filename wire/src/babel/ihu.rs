//! IHU, "I Heard You" (TLV type 5, body 6 bytes plus an optional address).
//!
//! ```text
//! u8  AE        0 (no address: what mycelium sends) | 1 (+4) | 2 (+16) | 3 (+8, fe80::/64)
//! u8  reserved  0
//! u16 rx_cost   the sender's link cost to us
//! u16 interval  centiseconds (mycelium: 6000)
//! [address]
//! ```

use core::net::IpAddr;

use bytes::BufMut;

use super::ae::{Ae, address_ae, decode_address, encode_address};
use crate::coding::{Codec, Reader};
use crate::error::DecodeError;
use crate::types::{Interval, Metric};

/// An IHU TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ihu {
    /// The sender's receive cost for the link.
    pub rx_cost: Metric,
    /// The IHU interval.
    pub interval: Interval,
    /// The neighbour's address, which mycelium never sends.
    pub address: Option<IpAddr>,
}

impl Codec for Ihu {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let ae = Ae(r.u8()?);
        let _reserved = r.u8()?;
        let rx_cost = Metric(r.u16()?);
        let interval = Interval(r.u16()?);
        let address = decode_address(r, ae)?;
        Ok(Self {
            rx_cost,
            interval,
            address,
        })
    }

    fn encode<B: BufMut>(&self, buf: &mut B) {
        buf.put_u8(address_ae(self.address).0.0);
        buf.put_u8(0);
        buf.put_u16(self.rx_cost.0);
        buf.put_u16(self.interval.0);
        encode_address(self.address, buf);
    }

    fn encoded_len(&self) -> usize {
        6 + address_ae(self.address).1
    }
}
