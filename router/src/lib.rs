//! hyphae-router: a Mycelium node.
//!
//! So far this crate holds nothing but its place in the workspace; the routing control plane
//! and the daemon come with their own issues.
