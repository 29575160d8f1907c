//! hyphae-edge: runs beside a Matrix homeserver and relays its federation over the overlay.
//!
//! Not implemented yet: the edge comes after the router daemon and the message subsystem. The
//! edge-to-edge framing it will speak is defined in `hyphae_wire::framing`.
#![forbid(unsafe_code)]
