//! `uringbench`: does an io_uring loop forward frames faster, or cheaper, than epoll on this
//! machine? It measures the forwarding core of one data-plane worker, driven three ways, each on
//! one pinned thread:
//!
//! ```text
//!  generators (load vCPU) ==N TCP==> forwarder (its own vCPU) ==M TCP==> sinks (load vCPU)
//! ```
//!
//! * **(a) epoll**: tokio current-thread, `read_buf` into a `BytesMut`, the router's deframer,
//!   runs of frames queued as `Bytes`, vectored writes: what the router's portable driver does
//!   (`tokio_fwd.rs`);
//! * (b), the same on tokio-uring 0.5 (the router's former uring driver), was removed with that
//!   driver; its last figures are in `bench/README.md`;
//! * **(c) io-uring**: a hand-written loop on the io-uring crate: `SINGLE_ISSUER|DEFER_TASKRUN`
//!   (falling back to `COOP_TASKRUN`), multishot receive into a provided-buffer ring, frames
//!   sent from the buffers they arrived in with one `sendmsg` per output per turn, one
//!   `io_uring_enter` per turn (`uring_fwd.rs`);
//! * **(d) epoll loop**: loop (c) on edge-triggered epoll with `recv` and `writev`: the same
//!   buffers and frame handling, readiness instead of completions (`epoll_fwd.rs`). (c) against
//!   (d) is what io_uring itself buys; (d) against (a) is what the buffer handling buys.
//!
//! Frames are hyphae data frames of a fixed size (296 and 1340 bytes by default), parsed from
//! their length field as the router's deframer does, routed by destination, hop limit
//! decremented; the sinks check that every frame arrives whole, once and in order.
//!
//! Each run warms up, then measures a window: frames delivered per second, Gbit/s, the
//! forwarding thread's CPU time (`/proc/self/task/TID/schedstat`, plus io_uring worker threads
//! if any), frames per CPU-second, context switches, and loop turns in (c) and (d) (one
//! `io_uring_enter` or `epoll_wait` each). Runs take turns: in every round each variant runs
//! once per configuration, in an order that alternates between rounds, and comparisons are made
//! within a round. A run during which other work took more than 10 % of a vCPU is redone
//! (`--retries`). Then, unless `--no-syscalls`, one more run per variant counts the forwarding
//! thread's system calls with perf tracepoints (separate, because counting slows the system
//! calls down). `--offered` paces the generators instead of saturating, to compare CPU per
//! frame at equal load.
//!
//! ```sh
//! cargo build --release -p hyphae-bench --bins
//! target/release/uringbench --json uringbench.json     # 5 rounds of 2 s, about 5 minutes
//! target/release/uringbench --quick                     # CI smoke run, about 10 s
//! ```

// A crate root in `src/bin/` finds its modules beside it: point them at `uringbench/`.
#[cfg(target_os = "linux")]
#[path = "uringbench/cli.rs"]
mod cli;
#[cfg(target_os = "linux")]
#[path = "uringbench/epoll_fwd.rs"]
mod epoll_fwd;
#[cfg(target_os = "linux")]
#[path = "uringbench/frames.rs"]
mod frames;
#[cfg(target_os = "linux")]
#[path = "uringbench/load.rs"]
mod load;
#[cfg(target_os = "linux")]
#[path = "uringbench/report.rs"]
mod report;
#[cfg(target_os = "linux")]
#[path = "uringbench/stats.rs"]
mod stats;
#[cfg(target_os = "linux")]
#[path = "uringbench/sys.rs"]
mod sys;
#[cfg(target_os = "linux")]
#[path = "uringbench/tokio_fwd.rs"]
mod tokio_fwd;
#[cfg(target_os = "linux")]
#[path = "uringbench/trial.rs"]
mod trial;
#[cfg(target_os = "linux")]
#[path = "uringbench/uring_fwd.rs"]
mod uring_fwd;

/// The router's allocator: (a) allocates per read as the router does.
#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(not(target_os = "linux"))]
fn main() -> anyhow::Result<()> {
    anyhow::bail!("uringbench measures io_uring: it needs Linux")
}

#[cfg(target_os = "linux")]
fn main() -> anyhow::Result<()> {
    cli::main()
}
