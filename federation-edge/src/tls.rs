//! TLS settings shared by every TLS endpoint of the edge: the proxy's terminated connections
//! (certificates from the site CA) and the delivery client to our homeserver.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The rustls crypto provider every TLS endpoint of the edge uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
