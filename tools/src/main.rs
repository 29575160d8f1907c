//! The `hyphae` operator CLI: not implemented yet, and says so.

fn main() -> std::process::ExitCode {
    eprintln!("hyphae: the operator CLI is not implemented yet");
    std::process::ExitCode::from(2)
}
