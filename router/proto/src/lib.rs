//! hyphae-proto: the sans-IO core of a Mycelium node: the Babel control plane, the forwarding
//! table, the message subsystem and the receive-window governor.
//!
//! # Contract (sans-IO)
//!
//! Nothing in this library opens a socket, reads a clock, spawns a task or draws randomness,
//! and the compiler keeps it so: the package depends on `hyphae-wire` and a few data-structure
//! crates, nothing with I/O (`.ci/run`'s sans-IO guard checks its dependency tree).
//! The [`babel::Router`] is a plain state machine in the style of `quinn-proto`:
//!
//! * inputs arrive through `handle_*(now, ...)` methods: a peer link came up or went down, a
//!   control TLV arrived from a peer, a timer expired, the node wants a route;
//! * outputs leave through `poll_*` methods: [`babel::Router::poll_transmit`] (a TLV for one
//!   peer, which the driver encodes with `Tlv::encode_frame`),
//!   [`babel::Router::poll_fib_change`] (selected-route changes for the forwarding table),
//!   [`babel::Router::poll_event`] (dead peers, timed-out queries) and
//!   [`babel::Router::poll_timeout`] (the one instant at which the driver must call
//!   [`babel::Router::handle_timeout`]).
//!
//! After any `handle_*` call the driver drains `poll_transmit`, `poll_fib_change` and
//! `poll_event` until they return `None`, then re-reads `poll_timeout` and arms one OS timer.
//! Every timer lives in one deadline structure inside the router; none is a task.
//!
//! Time is always passed in as `now: Instant`; the router only compares and adds to it, so a
//! simulation can run it on a fake clock built from one base `Instant`.
//!
//! The forwarding table ([`fib`]) is published as immutable snapshots: one writer applies the
//! router's [`fib::FibChange`]s and publishes, any number of reader threads look up next hops
//! without locks. A publication costs what changed since the last one, not the whole table
//! ([`snapshot`]).
//!
//! # Non-goals
//!
//! Peer connections, the data plane and the admin API live in the daemon (`hyphae-router`). The protocol rules
//! implemented here are those of stock mycelium 0.7.10 as `../shared/WIRE.md` section 3
//! describes them (Babel, RFC 8966, as mycelium adapts it).

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod babel;
pub mod fib;
pub mod hash;
pub mod message;
mod peer;
pub mod snapshot;
pub mod window;

pub use babel::{Config, Event, LinkKind, Router, Transmit};
pub use fib::{Fib, FibChange, FibReader, FibWriter};
pub use peer::PeerId;
