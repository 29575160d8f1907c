//! Sans-IO codecs for hyphae: the Mycelium peer protocol exactly as stock mycelium 0.7.x speaks
//! it, node identity and data sealing, the message-subsystem packets, and hyphae's own framing.
//!
//! # Contract
//!
//! This crate does no I/O, reads no clock, spawns nothing and draws no randomness on its own:
//! it is `#![no_std]` (with `alloc`), and its normal dependency tree holds no async runtime.
//! Callers hand it bytes and get values back, or hand it values and get bytes. The `std`
//! feature (on by default) adds only the key-file helpers and OS-random convenience functions.
//!
//! Nothing that arrives from the network can make it panic. Decoders keep three outcomes
//! apart: "need more bytes" (`Ok(None)` on streams), "this unit is bad, skip it" (a counted
//! [`babel::Skipped`] or a per-frame error), and "the stream is corrupt" (an error that
//! closes the link).
//!
//! # Map
//!
//! | module | what |
//! |---|---|
//! | [`packet`] | the 4-byte outer header |
//! | [`data`] | data frames: [`data::DataFrame`] view, [`data::DataHeader`] builder; in place |
//! | [`babel`] | control frames: Babel header and the five TLVs |
//! | [`deframer`] | stream deframer and one-shot datagram decoder |
//! | [`identity`] | keys, overlay address, `/64`, key file |
//! | [`router_id`] | the Babel router id (public key, zone, per-start random part) |
//! | [`seal`] | AES-256-GCM sealing of data bodies |
//! | [`icmp`] | ICMPv6 packets (RFC 4443) and the reference's out-of-band ICMP errors |
//! | [`offload`] | TUN offloads: the virtio-net header, TCP super-packets cut and merged |
//! | [`message`] | message-subsystem packets |
//! | [`framing`] | hyphae's internal framing (postcard bodies) |
//!
//! # Non-goals
//!
//! Routing decisions, timers, retransmission and sockets live in `hyphae-router`.
//! The wire format is documented in `../shared/WIRE.md` of the project; module docs repeat the
//! diagrams they implement.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![cfg_attr(not(fuzzing), warn(missing_docs))]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

extern crate alloc;
#[cfg(all(feature = "std", not(test)))]
extern crate std;

pub mod babel;
pub mod coding;
pub mod data;
pub mod deframer;
mod error;
pub mod framing;
pub mod icmp;
pub mod identity;
pub mod message;
pub mod offload;
pub mod packet;
pub mod router_id;
pub mod seal;
pub mod types;

pub use error::DecodeError;
pub use router_id::RouterId;
pub use types::{GLOBAL_SUBNET, Interval, Metric, SeqNo, Subnet};
