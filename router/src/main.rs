//! The `hyphae-router` binary: a Mycelium node. Run with no arguments for a node with the
//! reference's defaults (TCP and QUIC on 9651, API on 127.0.0.1:8989, key file under
//! `~/.local/share/hyphae`).

use std::process::ExitCode;

use clap::Parser;
use hyphae_router::daemon::{self, config::Cli};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tune_memory();
    let cli = Cli::parse();
    let settings = match cli.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hyphae-router: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(settings.log_level));
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(tty)
        .with_writer(std::io::stderr)
        .init();
    match daemon::run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hyphae-router: {e}");
            ExitCode::from(1)
        }
    }
}

/// mimalloc option 15: how long freed memory stays resident before it is returned, in ms.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// What each of the node's threads calls every few seconds (`daemon::set_memory_trim`):
/// mimalloc takes in the blocks other threads freed to this thread's pages, and returns the
/// pages that are then empty.
#[allow(unsafe_code)]
fn collect_thread_memory() {
    // SAFETY: collects the calling thread's own heap; no pointers are passed.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

/// Makes the node's resident memory follow what it holds, before the first allocations of
/// substance (measured with `router/tests/hostile.rs`, release build):
///
/// - Transparent huge pages off: mimalloc asks for them on its arenas, so each thread's first
///   small allocations faulted in 2 MiB pages; an idle node was 31 MB resident (22.5 MB of
///   huge pages), 8.5 MB without.
/// - Freed memory returned at once: mimalloc returns it lazily, on the freeing thread's next
///   allocation after a delay (1 s, 10 s for large blocks), so a control thread gone quiet
///   after taking 20,000 routes kept the tables its maps had outgrown: 36 MB resident, 29.5 MB
///   with this. The transit benchmark's rate did not move outside its noise.
/// - Each thread collects its own freed memory every few seconds (`collect_thread_memory`).
#[allow(unsafe_code)]
fn tune_memory() {
    let _ = daemon::disable_transparent_huge_pages();
    // SAFETY: sets a process-wide allocator option; mimalloc reads it on each purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    daemon::set_memory_trim(collect_thread_memory);
}
