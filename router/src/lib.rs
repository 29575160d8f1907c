//! hyphae-router: the Mycelium node's daemon, the threads, sockets and tasks around the sans-IO
//! core in [`hyphae_proto`]. See [`daemon`] for the threads, queues and the path of a frame.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod daemon;
