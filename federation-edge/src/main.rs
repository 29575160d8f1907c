//! The `hyphae-edge` binary: not implemented yet, and says so.

fn main() -> std::process::ExitCode {
    eprintln!("hyphae-edge: the federation edge is not implemented yet");
    std::process::ExitCode::from(2)
}
