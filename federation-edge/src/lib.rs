//! hyphae-edge: runs beside a Matrix homeserver and carries its federation over the Mycelium
//! overlay.
//!
//! ```text
//! homeserver A --CONNECT+TLS--> edge A --local socket / message API--> router A
//!      router A ==overlay messages (hyphae framing: Envelope)==> router B
//! router B --> edge B --HTTPS--> homeserver B, and the real response back the same way
//! ```
//!
//! * [`proxy`]: the homeserver's HTTPS CONNECT proxy. A CONNECT to a routed server name is
//!   terminated with a certificate minted from the site CA ([`ca`]) and every HTTP/1.1 request
//!   on it is relayed; anything else is a plain byte tunnel (ordinary federation).
//! * [`relay`]: the edge-to-edge protocol as a sans-IO state machine (requests, responses,
//!   streamed bodies with flow control, batching, peer liveness); no socket, clock or task.
//! * [`edge`]: the state the front ends share, the task that drives the relay, and the
//!   delivery of peers' requests.
//! * [`overlay`]: the thin drivers to a router (a hyphae-router's local socket, or any
//!   mycelium node's HTTP message API); [`router_api`]: what the edge asks a router's HTTP API.
//! * [`egress`]: delivery of relayed requests to the homeserver's federation listener.
//! * [`routes`]: the server-name route map (lock-free reads, atomic persistence).
//! * [`api`]: the bridge API and Prometheus metrics.
//! * [`server`]: start-up and shutdown, composing the above.
//!
//! Each module uses only modules below it, never one that uses it back: [`server`] on top, then
//! the front ends [`proxy`] and [`api`], then [`edge`], and under it the rest.
//!
//! Nothing is acknowledged early: a homeserver's request stays open until the destination
//! homeserver's real response is back, or fails with 502/504 so the homeserver retries.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod body;
pub mod ca;
pub mod config;
pub mod edge;
pub mod egress;
pub mod metrics;
pub mod overlay;
pub mod proxy;
pub mod relay;
pub mod router_api;
pub mod routes;
pub mod server;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tls;
pub mod xmatrix;
