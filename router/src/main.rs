//! The `hyphae-router` binary: a Mycelium node. Run with no arguments for a node with the
//! reference's defaults (TCP and QUIC on 9651, API on 127.0.0.1:8989, key file under
//! `~/.local/share/hyphae`).

use std::process::ExitCode;

use clap::Parser;
use hyphae_router::daemon::{self, config::Cli};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
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
