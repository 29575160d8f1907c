//! The `hyphae-router` binary: a Mycelium node. Run with no arguments for a node with the
//! reference's defaults (TCP and QUIC on 9651, API on 127.0.0.1:8989, key file under
//! `~/.local/share/hyphae`).

use std::process::ExitCode;

use clap::Parser;
use hyphae_router::daemon::{self, config::Cli};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before the first allocation: one background thread returns freed
/// pages to the kernel 1 s after they were last used (`dirty_decay_ms`), straight away rather
/// than through a lazily freed stage (`muzzy_decay_ms`), whichever thread freed them and
/// whether or not it allocates again. `$_RJEM_MALLOC_CONF` still overrides them.
///
/// Why jemalloc: under the soak's hour of churn (`bench/src/bin/soak.rs`) mimalloc's resident
/// memory kept climbing for 20 minutes and more, to 33-38 % above its level after 5 minutes,
/// with the live heap flat at 11-13 MB (heaptrack): its per-thread pages for each size class
/// stay resident while any block in them lives. jemalloc with these options held 21-24 MB
/// where mimalloc held 29-39, and moved as many or more frames per CPU-second in `transit`.
#[allow(non_upper_case_globals, unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 85] =
    b"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

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

/// Turns transparent huge pages off before the first allocations of substance: with them on,
/// each thread's first small allocations could fault in whole 2 MiB pages (an idle node was 31
/// MB resident, 22.5 MB of it huge pages, against 9.5 MB without; `router/tests/hostile.rs`).
fn tune_memory() {
    let _ = daemon::disable_transparent_huge_pages();
}
