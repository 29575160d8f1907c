//! Why the daemon could not start.

use std::net::SocketAddr;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad key file.
    #[error(transparent)]
    Key(#[from] hyphae_wire::identity::key_file::KeyFileError),
    /// A socket could not be bound.
    #[error("{what} {addr}: {source}")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TUN device could not be set up.
    #[error(transparent)]
    Tun(#[from] super::tun::TunError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}
