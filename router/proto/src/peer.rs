//! The driver's handle for a peer link.

/// An opaque handle for one peer link, chosen by the driver. The router never interprets it;
/// it must be unique among the links that are up at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u64);
