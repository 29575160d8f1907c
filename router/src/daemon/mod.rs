//! The `hyphae-router` daemon: threads, peer links, forwarding and the APIs around the sans-IO
//! core in [`hyphae_proto`].
//!
//! # Threads and queues
//!
//! ```text
//!  HTTP API thread (api, metrics)        control thread (control)
//!  axum; asks, never touches a socket    babel::Router, peer manager, FibWriter
//!        |  Admin / MsgCmd                  ^  ControlMsg inbox (bounded)  |  FIB + route keys
//!        v                                  |                              v  (lock-free snapshots)
//!  inbox: Inboxes { control, messages } ----+          Workers::dial  ---> worker i
//!
//!  worker 0 .. N-1 (worker): one thread, one tokio runtime each (+ an io_uring `ring`, or epoll)
//!    tcp: listener (SO_REUSEPORT) and dialed links    peer: read -> deframe -> forward
//!    its queue of the TUN device (tun, IFF_MULTI_QUEUE)  forward::l3: read -> cut -> seal
//!    HOME worker also: message task (message_task), local socket (local_socket),
//!                      QUIC endpoint (quic), link-local discovery (discovery)
//! ```
//!
//! Arrows only point down this list of modules; none imports one above it:
//!
//! | layer | modules |
//! |---|---|
//! | start | `start` (binds every socket, builds `Shared`, starts the threads) |
//! | front ends | `api` (+ `metrics`), `local_socket` |
//! | threads | `control`, `worker` |
//! | tasks and links | `message_task` (+ `topic_forward`), `discovery`, `tcp`, `quic`, `peer` |
//! | data path | `forward` (+ `l3`, the IPv6 overlay), `link` (I/O halves and drivers), `calibrate` (`--driver auto`), `ring` (io_uring), `tun`, `sockopt` |
//! | shared vocabulary | `inbox` (commands), `shared`, `peers`, `keys`, [`endpoint`], [`config`], `error` |
//!
//! # The path of one forwarded frame
//!
//! `peer::serve` reads into the link's receive buffer and deframes it in place;
//! `Forwarder::handle_frames` looks the destination up in the forwarding table (a lock-free
//! snapshot), rewrites the hop limit in place and rejoins consecutive frames for one egress
//! link into one slice of the same buffer; `PeerHandle::enqueue` puts it on that link's
//! bounded queue (dropped and counted when full); the egress link's `write_loop` (on whichever
//! worker owns it) writes its queue in one vectored write. Control TLVs go to the control
//! thread's inbox instead; frames without a route are held per /64 while the control thread
//! asks for one.
//!
//! # The path of one message
//!
//! An application pushes on the local socket (or the HTTP API); the front end sends
//! `MsgCmd::Push` through `inbox`'s handle to the message task on the home worker, whose
//! `hyphae_proto::message::Messages` state machine cuts it into packets; the task seals each
//! into a data frame (`DataHeader::emit_sealed`) and queues it on the egress link like a
//! forwarded frame. At the far end, `Forwarder::handle_frames` opens a frame addressed to its
//! node in place and hands the packet, a slice of the receive buffer, to that node's message
//! task, which acknowledges it and delivers the message to a waiting receiver, a subscription,
//! or a topic's forward socket (`topic_forward`).
//!
//! # The path of one IPv6 packet
//!
//! The host sends to an overlay address; 400::/7 routes into the TUN device, and the kernel
//! picks one of its queues (one per worker) by flow. The worker's `Forwarder::serve_tun` reads
//! a TCP super-packet of up to 64 KiB, cuts it into segments straight into frame buffers
//! (`hyphae_wire::offload::Segments`), and `handle_tun` checks each (source in our /64, else
//! dropped and counted), seals it where it lies (`DataHeader::seal_in_place`) and queues it on
//! the egress link like a forwarded frame, or holds it while the route is looked for (then
//! ICMPv6 "no route" on the device). At the far end `handle_frames` opens the frame in place;
//! the packets of one read batch are written to the device together, consecutive segments of
//! one TCP flow as one super-packet (`hyphae_wire::offload::TcpMerge`).

pub mod config;
pub mod endpoint;

mod admission;
mod api;
mod calibrate;
mod control;
mod discovery;
mod error;
mod forward;
mod inbox;
mod keys;
mod link;
mod local_socket;
mod memory;
mod message_task;
mod metrics;
mod peer;
mod peers;
mod quic;
mod ring;
mod shared;
mod sockopt;
mod start;
mod tcp;
mod topic_forward;
mod tun;
mod worker;

#[doc(hidden)]
pub use control::publish_route_keys;
pub use error::StartError;
pub use memory::set_trim as set_memory_trim;
#[doc(hidden)]
pub use shared::RouteKeys;
pub use sockopt::disable_transparent_huge_pages;
pub use start::{Running, run, start};
pub use tun::TunError;
